"""`ingest kpis [--config FILE]`: run the KPI consumer (the service is `ingest.kpis.consumer`)."""

from __future__ import annotations

import argparse

from ingest.commands._service import add_config_argument, run_service
from ingest.kpis.consumer import KpiSettings, serve


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)


def run(args: argparse.Namespace) -> int:
    return run_service(
        args.config,
        lambda path: KpiSettings.load(config_file=path),
        lambda settings: settings.log_level,
        serve,
    )
