"""ingest.mailboxes.mailbox_file: the one mailbox-list format, as the worker reads it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ingest.errors import ConfigError
from ingest.mailboxes.mailbox_file import watched_aliases


def test_mailbox_file_formats(tmp_path: Path) -> None:
    """Mailbox lists: lines with comments, a JSON array, or a users file keyed by alias."""
    lines = tmp_path / "m.txt"
    lines.write_text("# team\nalice\n\nbob  # on leave\nalice\n")
    assert watched_aliases(lines) == ["alice", "bob"]
    array = tmp_path / "m.json"
    array.write_text(json.dumps(["carol", "dave"]))
    assert watched_aliases(array) == ["carol", "dave"]
    array.write_text(json.dumps({"erin": {"password": "x"}}))
    assert watched_aliases(array) == ["erin"]


@pytest.mark.parametrize(("name", "content"), [("m.txt", "# nobody\n"), ("m.json", "[1, 2]")])
def test_bad_mailbox_files(tmp_path: Path, name: str, content: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(ConfigError, match="CUMI_MAILBOXES_FILE"):
        watched_aliases(path)
