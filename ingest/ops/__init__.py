"""Operations: Prometheus metrics, the health/metrics HTTP server, logging, backoff, the clock and
garbage-collector tuning."""
