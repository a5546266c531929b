"""The event log on Kafka: the wire format, topic specs, the worker's producer (sink) and the fast
reader of the events topic."""
