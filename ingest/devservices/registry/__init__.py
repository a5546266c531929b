"""The local development schema registry: Apicurio Registry with its Confluent-compatible API.

    ingest registry fetch                  # the distribution into the cache (once)
    ingest registry start [--foreground]   # prints the Confluent-compatible base URL
    ingest registry status | stop

`LocalRegistry` (server.py) for code and tests; `fetch()` (runtime.py). Package data: pom.xml
(the distribution Maven unpacks).
"""

from ingest.devservices.registry.runtime import RegistryRuntime, apicurio_version, fetch
from ingest.devservices.registry.server import LocalRegistry

__all__ = ["LocalRegistry", "RegistryRuntime", "apicurio_version", "fetch"]
