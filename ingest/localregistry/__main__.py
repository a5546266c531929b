"""`python -m ingest.localregistry fetch|start|stop|status` (see ingest/localregistry/cli.py)."""

import argparse
import sys

from ingest.localregistry import cli
from ingest.ops.logs import configure_logging  # the one import of a module outside the dev tools

parser = argparse.ArgumentParser(prog="python -m ingest.localregistry", description=cli.__doc__)
parser.formatter_class = argparse.RawDescriptionHelpFormatter
parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
cli.add_arguments(parser)
args = parser.parse_args()
configure_logging(args.log_level)
sys.exit(cli.run(args))
