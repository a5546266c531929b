"""Per-mailbox CUMI credentials behind one small port, `CredentialsProvider`.

`requestnotification` acts for the authenticated user (docs/design.md §3), so every mailbox needs
its own credentials — either the user's own (HTTP Basic or a Bearer token, from a secrets file or a
directory of files as Kubernetes mounts a Secret), or a delegate service account plus the user's
`userobjectid` (resolved from the alias once, then cached). Secrets are held as `Secret` and never
logged.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ingest.errors import AuthError, ConfigError
from ingest.settings import CredentialSettings, CredentialsProviderKind, Secret

log = logging.getLogger(__name__)

ObjectIdLookup = Callable[[str, "Credential"], Awaitable[str]]
"""(alias, delegate credential) → the user's objectId; `CumiRestClient.lookup_object_id` fits."""


class MissingCredentials(AuthError):
    """No credentials are configured for a mailbox."""


@dataclass(frozen=True, slots=True)
class Credential:
    """What a request on behalf of one mailbox carries."""

    authorization: Secret
    """The whole Authorization header value (`Basic …` or `Bearer …`)."""
    user_object_id: str | None = None
    """Set for delegate access: the `userobjectid` query parameter."""

    @classmethod
    def basic(cls, username: str, password: str) -> Credential:
        token = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
        return cls(Secret(f"Basic {token}"))

    @classmethod
    def bearer(cls, token: str) -> Credential:
        return cls(Secret(f"Bearer {token}"))

    def headers(self) -> dict[str, str]:
        return {"Authorization": self.authorization.reveal()}

    def params(self) -> dict[str, str]:
        return {"userobjectid": self.user_object_id} if self.user_object_id else {}


class CredentialsProvider(Protocol):
    """Where a mailbox's credentials come from."""

    async def credential_for(self, alias: str) -> Credential:
        """The credential for `alias`; raises MissingCredentials when there is none."""
        ...

    def forget(self, alias: str) -> None:
        """Drop anything cached for `alias` (after the server refused it), so it is read afresh."""
        ...


def credential_from_entry(alias: str, entry: Any, where: str) -> Credential:
    """A secrets entry: {"password": …[, "username": …]}, {"token": …} or a bare password."""
    if isinstance(entry, str):
        return Credential.basic(alias, entry)
    if isinstance(entry, Mapping):
        # password first: it is the simulator's stable contract; a token-only entry is SSO
        token, password = entry.get("token"), entry.get("password")
        username = entry.get("username", alias)
        if isinstance(password, str) and isinstance(username, str) and username:
            return Credential.basic(username, password)
        if isinstance(token, str) and token:
            return Credential.bearer(token)
    # never echo the entry: it holds the secret
    raise ConfigError(
        f"{where}: credentials for {alias!r} must be {{'password': …}} or {{'token': …}}"
    )


class FileCredentials:
    """A JSON file `{alias: {"password": …} | {"token": …}}`, re-read when it changes on disk.

    The format `ingest simulator --users-file` writes, and the shape of a mounted Secret key.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._mtime_ns = -1
        self._entries: dict[str, Any] = {}

    def _load(self) -> None:
        try:
            mtime = self._path.stat().st_mtime_ns
        except OSError as e:
            raise ConfigError(f"CUMI_CREDENTIALS_FILE: cannot read {str(self._path)!r}") from e
        if mtime == self._mtime_ns:
            return
        try:
            data = json.loads(self._path.read_bytes())
        except (OSError, ValueError) as e:
            raise ConfigError(
                f"CUMI_CREDENTIALS_FILE: {str(self._path)!r} is not a JSON object of credentials"
            ) from e
        if not isinstance(data, dict):
            raise ConfigError(
                f"CUMI_CREDENTIALS_FILE: {str(self._path)!r} must be a JSON object {{alias: …}}"
            )
        self._entries, self._mtime_ns = data, mtime
        log.info("read credentials for %d mailboxes from %s", len(data), self._path)

    def aliases(self) -> list[str]:
        self._load()
        return list(self._entries)

    async def credential_for(self, alias: str) -> Credential:
        self._load()
        if alias not in self._entries:
            raise MissingCredentials(
                f"no credentials for mailbox {alias!r} in the credentials file"
            )
        return credential_from_entry(alias, self._entries[alias], "CUMI_CREDENTIALS_FILE")

    def forget(self, alias: str) -> None:
        self._mtime_ns = -1  # re-read: the secret may have been rotated


class DirectoryCredentials:
    """One file per alias in a directory (a Kubernetes Secret mounted as a volume).

    A file holds either a bare password or a JSON object like the entries of `FileCredentials`.
    """

    def __init__(self, directory: Path) -> None:
        self._directory = directory

    async def credential_for(self, alias: str) -> Credential:
        if not alias or alias.startswith(".") or "/" in alias or "\\" in alias:
            raise MissingCredentials(f"mailbox alias {alias!r} cannot name a credentials file")
        path = self._directory / alias
        try:
            text = path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            raise MissingCredentials(
                f"no credentials file for mailbox {alias!r} in CUMI_CREDENTIALS_DIR"
            ) from None
        except OSError as e:
            raise MissingCredentials(
                f"cannot read credentials of mailbox {alias!r}: {e.strerror}"
            ) from e
        entry: Any = text
        if text.startswith("{"):
            try:
                entry = json.loads(text)
            except ValueError:
                entry = None
        return credential_from_entry(alias, entry, "CUMI_CREDENTIALS_DIR")

    def forget(self, alias: str) -> None:
        """Nothing cached: every call reads the file."""


class DelegateCredentials:
    """A delegate service account acting for every mailbox through `userobjectid`.

    The alias → objectId lookup is cached, and concurrent lookups of one alias share one request.
    """

    def __init__(self, account: Credential, lookup: ObjectIdLookup) -> None:
        self._account = account
        self._lookup = lookup
        self._object_ids: dict[str, str] = {}
        self._pending: dict[str, asyncio.Future[str]] = {}

    @property
    def account(self) -> Credential:
        return self._account

    async def credential_for(self, alias: str) -> Credential:
        object_id = self._object_ids.get(alias)
        if object_id is None:
            object_id = await self._resolve(alias)
        return Credential(self._account.authorization, user_object_id=object_id)

    async def _resolve(self, alias: str) -> str:
        pending = self._pending.get(alias)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._pending[alias] = future
        try:
            object_id = await self._lookup(alias, self._account)
        except BaseException as e:
            future.set_exception(e)
            future.exception()  # waiters re-raise; don't warn when there were none
            raise
        finally:
            del self._pending[alias]
        future.set_result(object_id)
        self._object_ids[alias] = object_id
        return object_id

    def forget(self, alias: str) -> None:
        self._object_ids.pop(alias, None)


def build_provider(settings: CredentialSettings, lookup: ObjectIdLookup) -> CredentialsProvider:
    """The provider the settings ask for; `lookup` is only used by the delegate provider."""
    if settings.provider is CredentialsProviderKind.FILE:
        assert settings.file is not None  # validated by the settings
        return FileCredentials(settings.file)
    if settings.provider is CredentialsProviderKind.DIRECTORY:
        assert settings.directory is not None
        return DirectoryCredentials(settings.directory)
    if settings.delegate_token is not None:
        account = Credential.bearer(settings.delegate_token.reveal())
    else:
        assert settings.delegate_user is not None and settings.delegate_password is not None
        account = Credential.basic(settings.delegate_user, settings.delegate_password.reveal())
    return DelegateCredentials(account, lookup)
