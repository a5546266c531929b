"""`python -m ingest.devservices.connect fetch`: Kafka Connect and the registry-aware Avro
converter into the cache, once (`make tools` runs it, so no test waits for Maven).

A developer tool, deliberately not an `ingest` sub-command.
"""

from __future__ import annotations

import argparse
import sys

from ingest.devservices.connect.runtime import fetch, versions
from ingest.errors import DevServiceError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ingest.devservices.connect", description=__doc__
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("fetch", help="fetch the Connect runtime and converter (idempotent)")
    parser.parse_args(argv)
    try:
        runtime = fetch()
    except DevServiceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    kafka, apicurio = versions()
    print(f"Kafka Connect {kafka} with the Apicurio {apicurio} converter: {runtime.home}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
