"""Credentials providers: file, directory, delegate; secrets never shown."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import pytest

from ingest.cumi.credentials import (
    Credential,
    DelegateCredentials,
    DirectoryCredentials,
    FileCredentials,
    MissingCredentials,
)
from ingest.errors import ConfigError


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class TestFileCredentials:
    """A JSON file {alias: {"password"|"token": …}}, re-read when it changes."""

    async def test_password_token_and_username(self, tmp_path: Path) -> None:
        path = tmp_path / "users.json"
        path.write_text(
            json.dumps(
                {
                    "alice": {"password": "pa", "object_id": "x", "token": "ignored"},
                    "bob": {"token": "tb"},
                    "carol": {"username": "CAROL", "password": "pc"},
                }
            )
        )
        provider = FileCredentials(path)
        alice = await provider.credential_for("alice")
        assert alice.headers() == {"Authorization": basic("alice", "pa")}
        assert alice.params() == {}
        assert (await provider.credential_for("bob")).headers()["Authorization"] == "Bearer tb"
        assert (await provider.credential_for("carol")).headers()["Authorization"] == basic(
            "CAROL", "pc"
        )
        assert "pa" not in repr(alice)

    async def test_missing_alias(self, tmp_path: Path) -> None:
        path = tmp_path / "users.json"
        path.write_text("{}")
        with pytest.raises(MissingCredentials, match="zed"):
            await FileCredentials(path).credential_for("zed")

    async def test_rotation_is_picked_up_after_forget(self, tmp_path: Path) -> None:
        path = tmp_path / "users.json"
        path.write_text(json.dumps({"alice": {"password": "old"}}))
        provider = FileCredentials(path)
        await provider.credential_for("alice")
        path.write_text(json.dumps({"alice": {"password": "new"}}))
        provider.forget("alice")
        cred = await provider.credential_for("alice")
        assert cred.headers()["Authorization"] == basic("alice", "new")

    async def test_malformed_entry_does_not_leak(self, tmp_path: Path) -> None:
        path = tmp_path / "users.json"
        path.write_text(json.dumps({"alice": {"pass": "s3cret"}}))
        with pytest.raises(ConfigError) as info:
            await FileCredentials(path).credential_for("alice")
        assert "s3cret" not in str(info.value)


class TestDirectoryCredentials:
    """One file per alias: a bare password or a JSON entry."""

    async def test_plain_and_json(self, tmp_path: Path) -> None:
        (tmp_path / "alice").write_text("pa\n")
        (tmp_path / "bob").write_text('{"token": "tb"}')
        provider = DirectoryCredentials(tmp_path)
        assert (await provider.credential_for("alice")).headers()["Authorization"] == basic(
            "alice", "pa"
        )
        assert (await provider.credential_for("bob")).headers()["Authorization"] == "Bearer tb"

    @pytest.mark.parametrize("alias", ["nobody", "../etc", ".hidden", ""])
    async def test_missing_or_unsafe(self, tmp_path: Path, alias: str) -> None:
        with pytest.raises(MissingCredentials):
            await DirectoryCredentials(tmp_path).credential_for(alias)


class TestDelegateCredentials:
    """The delegate account acts with userobjectid; lookups are cached and shared."""

    async def test_lookup_cached_and_deduplicated(self) -> None:
        calls: list[str] = []
        account = Credential.basic("svc", "pw")

        async def lookup(alias: str, cred: Credential) -> str:
            assert cred is account
            calls.append(alias)
            await asyncio.sleep(0.01)
            return f"oid-{alias}"

        provider = DelegateCredentials(account, lookup)
        creds = await asyncio.gather(*(provider.credential_for("alice") for _ in range(5)))
        assert {c.params()["userobjectid"] for c in creds} == {"oid-alice"}
        assert creds[0].headers() == {"Authorization": basic("svc", "pw")}
        await provider.credential_for("alice")
        assert calls == ["alice"]
        provider.forget("alice")
        await provider.credential_for("alice")
        assert calls == ["alice", "alice"]

    async def test_lookup_failure_propagates_to_every_waiter(self) -> None:
        async def lookup(alias: str, cred: Credential) -> str:
            await asyncio.sleep(0.01)
            raise MissingCredentials(f"no user {alias}")

        provider = DelegateCredentials(Credential.bearer("t"), lookup)
        results = await asyncio.gather(
            *(provider.credential_for("ghost") for _ in range(3)), return_exceptions=True
        )
        assert all(isinstance(r, MissingCredentials) for r in results)
