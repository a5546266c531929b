"""The event log on Kafka: the wire format (both framings), topic specs, the worker's producer
(sink), registry mode (schema_registry) and the fast reader of the events topic."""
