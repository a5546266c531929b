"""Kafka Connect for tests: a standalone worker with the FileStreamSink connector and a
registry-aware Avro converter, all from Maven Central.

`LocalConnect` (server.py) runs one standalone worker with the connectors it is given;
`fetch()` (runtime.py) the jars. `apicurio_avro_converter(url)` is the converter configuration
that reads the Confluent wire format our registry mode writes (docs/topics.md). Package data:
pom.xml, log4j2.properties.
"""

from ingest.devservices.connect.runtime import ConnectRuntime, fetch
from ingest.devservices.connect.server import LocalConnect, apicurio_avro_converter

__all__ = ["ConnectRuntime", "LocalConnect", "apicurio_avro_converter", "fetch"]
