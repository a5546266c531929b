"""`python -m ingest.devservices.cometd fetch|run`: install, or run in the foreground until Ctrl-C.

A developer tool (`make tools` runs `fetch`), deliberately not an `ingest` sub-command.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from ingest.devservices.cometd.runtime import fetch, versions
from ingest.devservices.cometd.server import LocalCometdServer
from ingest.errors import DevServiceError


async def _run(port: int | None) -> None:
    async with LocalCometdServer(port=port) as server:
        print(f"Bayeux: {server.cometd_url}", flush=True)
        print(f"publish: POST {server.base_url}/_ref/publish  channels: GET .../_ref/state")
        print(f"log: {server.log_path}  (Ctrl-C stops)", flush=True)
        await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ingest.devservices.cometd", description=__doc__
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("fetch", help="fetch the jars and compile the server (idempotent)")
    run = commands.add_parser("run", help="run the server on 127.0.0.1 until Ctrl-C")
    run.add_argument("--port", type=int, default=None, help="default: a free one")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "fetch":
            runtime = fetch()
            cometd, jetty = versions()
            print(f"reference CometD server {cometd} on Jetty {jetty}: {runtime.home}")
        else:
            asyncio.run(_run(args.port))
    except DevServiceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
