"""The local Kafka: `LocalBroker` (one KRaft node) and `LocalCluster` (three of them in a quorum).

`ensure_runtime()` fetches the jars once (`ingest broker fetch`, `make tools`). Package data:
pom.xml (the runtime classpath Maven gathers), log4j2.properties, the server.properties template
and quorum.properties (what a node of a cluster adds).
"""

from ingest.devservices.kafka.cluster import LocalCluster
from ingest.devservices.kafka.node import LocalBroker, ensure_runtime
from ingest.devservices.kafka.runtime import KafkaRuntime, kafka_version

__all__ = ["KafkaRuntime", "LocalBroker", "LocalCluster", "ensure_runtime", "kafka_version"]
