"""cumi-pipeline: Cisco Unity Connection Comet notifications to a replayable Kafka event log."""

__version__ = "0.1.0"
