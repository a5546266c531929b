"""Logging setup: JSON lines when stderr is not a terminal (containers), readable text on a TTY."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sys


class JsonFormatter(logging.Formatter):
    """One JSON object per line, the format log shippers in Kubernetes expect."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(level: str = "INFO") -> None:
    """Configure the root logger once; `CUMI_LOG_FORMAT=json|text` overrides the TTY guess."""
    fmt = os.environ.get("CUMI_LOG_FORMAT") or ("text" if sys.stderr.isatty() else "json")
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiokafka is chatty at INFO about every group rebalance step
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, root.level))
