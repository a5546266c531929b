"""The one mailbox-list file format, read by `CUMI_MAILBOXES_FILE` (the worker's file source) and
by `ingest mailboxes import`.

- One alias per line, `#` starts a comment; blank lines and repeats are ignored.
- A JSON array of aliases.
- A JSON object keyed by alias whose values may set `server`, `credentials_ref` and `enabled`
  (other keys are ignored, so the credentials file works as is — its secrets are never read into
  a record).
- JSON lines as `ingest mailboxes list --json` prints them.

A `.json` file, or one starting with `[` or `{`, is JSON.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from ingest.errors import ConfigError
from ingest.events import MailboxRegistryEntry
from ingest.ops.clock import SYSTEM_CLOCK


def parse_mailbox_file(
    path: Path, *, server: str | None, credentials_ref: str | None, enabled: bool = True
) -> dict[str, MailboxRegistryEntry]:
    """Entries from a mailbox list (see the module docstring); the options are the defaults of
    fields a JSON object entry does not set."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read {str(path)!r}: {e.strerror}") from e
    stamp = SYSTEM_CLOCK.utc_now()
    defaults = MailboxRegistryEntry(
        "-", stamp, server=server, credentials_ref=credentials_ref, enabled=enabled
    )
    if path.suffix.lower() == ".json" or text.lstrip().startswith(("[", "{")):
        data = _json_or_lines(text, path)
        if not isinstance(data, dict | list):
            raise ConfigError(f"{str(path)!r} must hold a JSON array or object")
        items = data.items() if isinstance(data, dict) else ((a, None) for a in data)
        return dict(_json_entry(alias, fields, defaults, path) for alias, fields in items)
    lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
    return {alias: replace(defaults, mailbox_id=alias) for alias in lines if alias}


def _json_or_lines(text: str, path: Path) -> Any:
    """A JSON document, or JSON lines of entries as `list --json` prints them (keyed by their
    `mailbox_id` then, so that `list --json --all` output imports into another registry)."""
    try:
        return json.loads(text)
    except ValueError as e:
        error = e
    lines = [line for line in text.splitlines() if line.strip()]
    try:
        entries = [json.loads(line) for line in lines]
    except ValueError:
        raise ConfigError(f"{str(path)!r} is not valid JSON: {error}") from error
    if not all(isinstance(e, dict) and isinstance(e.get("mailbox_id"), str) for e in entries):
        raise ConfigError(f"{str(path)!r}: JSON lines must be objects with a mailbox_id")
    return {e["mailbox_id"]: e for e in entries}


def _json_entry(
    alias: Any, fields: Any, defaults: MailboxRegistryEntry, path: Path
) -> tuple[str, MailboxRegistryEntry]:
    if not isinstance(alias, str) or not alias.strip():
        raise ConfigError(f"{str(path)!r}: mailbox ids must be non-empty strings")
    values: dict[str, Any] = {}
    if isinstance(fields, Mapping):
        for name in ("server", "credentials_ref"):
            if name in fields:
                if fields[name] is not None and not isinstance(fields[name], str):
                    raise ConfigError(f"{str(path)!r}: {alias}: {name} must be a string or null")
                values[name] = fields[name]
        if "enabled" in fields:
            if not isinstance(fields["enabled"], bool):
                raise ConfigError(f"{str(path)!r}: {alias}: enabled must be true or false")
            values["enabled"] = fields["enabled"]
    alias = alias.strip()
    return alias, replace(defaults, mailbox_id=alias, **values)


def watched_aliases(path: Path) -> list[str]:
    """The enabled mailboxes a file lists, in file order (the worker's `CUMI_MAILBOXES_FILE`)."""
    try:
        entries = parse_mailbox_file(path, server=None, credentials_ref=None)
    except ConfigError as e:
        raise ConfigError(f"CUMI_MAILBOXES_FILE: {e}") from e
    aliases = [alias for alias, entry in entries.items() if entry.enabled]
    if not aliases:
        raise ConfigError(f"CUMI_MAILBOXES_FILE: {str(path)!r} lists no mailboxes")
    return aliases
