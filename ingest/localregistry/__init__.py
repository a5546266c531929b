"""The local development schema registry: Apicurio Registry with its Confluent-compatible API.

    python -m ingest.localregistry fetch                  # the distribution into the cache (once)
    python -m ingest.localregistry start [--foreground]   # prints the Confluent-compatible base URL
    python -m ingest.localregistry status | stop

`LocalRegistry` (node.py) for code and tests; `fetch()` (runtime.py); the command line (cli.py).
Package data: pom.xml (the distribution Maven unpacks).
"""
