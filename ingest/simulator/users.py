"""The simulator's user table: who may call the REST API, and as whom.

Every mailbox belongs to a generated user (alias `user0001`…, a password, an objectId GUID, a
display name and a bearer token). One extra *delegate* account (the "Mailbox Access Delegate
Account" role of Unity Connection) may act for any user by adding `?userobjectid=<objectId>`.

The users file written by `ingest simulator --users-file` is a JSON object keyed by alias:
`{"user0001": {"password": "…", "object_id": "…", "display_name": "…", "token": "…"}, …}`. The keys
`password` and `object_id` are the stable contract for workers; the others may grow. The delegate is
written separately (`--delegate-file`) as `{"username": "…", "password": "…", "token": "…"}` so the
users file stays a plain alias → credentials map.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import random
import secrets
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from aiohttp import encode_basic_auth

DELEGATE_ALIAS = "cumi-delegate"

_FIRST = (
    "Alexander", "Grace", "Ada", "Alan", "Barbara", "Claude", "Donald", "Edsger", "Frances",
    "Guido",
    "Hedy", "Ivan", "Joan", "Ken", "Linus", "Margaret", "Niklaus", "Radia", "Sophie", "Tim",
)  # fmt: skip
_LAST = (
    "Bell", "Hopper", "Lovelace", "Turing", "Liskov", "Shannon", "Knuth", "Dijkstra", "Allen",
    "van Rossum", "Lamarr", "Sutherland", "Clarke", "Thompson", "Torvalds", "Hamilton", "Wirth",
    "Perlman", "Wilson", "Berners-Lee",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class User:
    """One Unity Connection user with a mailbox."""

    alias: str
    """Login name; also the MailboxId of its Comet events."""
    password: str
    object_id: str
    """The user's ObjectId GUID (`?userobjectid=` for the delegate)."""
    display_name: str
    token: str
    """Accepted as `Authorization: Bearer <token>` (SSO tokens, Unity Connection ≥ 10.5)."""

    def authorization(self) -> str:
        """The `Authorization` header value for HTTP Basic auth."""
        return encode_basic_auth(self.alias, self.password)


@dataclass(frozen=True, slots=True)
class Credentials:
    """Login of the delegate account (no mailbox of its own)."""

    username: str
    password: str
    token: str

    def authorization(self) -> str:
        """The `Authorization` header value for HTTP Basic auth."""
        return encode_basic_auth(self.username, self.password)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who an authenticated request runs as."""

    name: str
    user: User | None
    """The mailbox owner, or None for the delegate."""

    @property
    def is_delegate(self) -> bool:
        return self.user is None


def _guid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _secret(rng: random.Random, length: int = 20) -> str:
    return "".join(rng.choices("abcdefghijkmnpqrstuvwxyzACDEFGHJKLMNPQRSTUVWXYZ23456789", k=length))


class UserTable(Mapping[str, User]):
    """Generated users by alias, with O(1) lookups by objectId and token."""

    def __init__(self, users: list[User], delegate: Credentials) -> None:
        self._by_alias = {u.alias: u for u in users}
        self._by_object_id = {u.object_id: u for u in users}
        self._by_token = {u.token: u for u in users}
        self.delegate = delegate

    @classmethod
    def generate(cls, count: int, seed: int) -> UserTable:
        """`count` users `user0001`… with credentials derived from `seed` (same seed, same)."""
        rng = random.Random(f"users-{seed}")
        width = max(4, len(str(count)))
        users = [
            User(
                alias=f"user{i:0{width}d}",
                password=_secret(rng),
                object_id=_guid(rng),
                display_name=f"{rng.choice(_FIRST)} {rng.choice(_LAST)}",
                token=_secret(rng, 32),
            )
            for i in range(1, count + 1)
        ]
        delegate = Credentials(DELEGATE_ALIAS, _secret(rng), _secret(rng, 32))
        return cls(users, delegate)

    def __getitem__(self, alias: str) -> User:
        return self._by_alias[alias]

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_alias)

    def __len__(self) -> int:
        return len(self._by_alias)

    def by_object_id(self, object_id: str) -> User | None:
        return self._by_object_id.get(object_id)

    def authenticate(self, header: str | None) -> Principal | None:
        """The principal for an `Authorization` header value, or None if it does not log in."""
        if not header:
            return None
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer":
            return self._from_token(value.strip())
        if scheme.lower() != "basic":
            return None
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (ValueError, binascii.Error):
            return None
        login, colon, password = decoded.partition(":")
        return self._from_basic(login, password) if colon else None

    def _from_basic(self, login: str, password: str) -> Principal | None:
        if login == self.delegate.username:
            ok = _same(password, self.delegate.password)
            return Principal(self.delegate.username, None) if ok else None
        user = self._by_alias.get(login)
        if user is None or not _same(user.password, password):
            return None
        return Principal(user.alias, user)

    def _from_token(self, token: str) -> Principal | None:
        if token == self.delegate.token:
            return Principal(self.delegate.username, None)
        user = self._by_token.get(token)
        return Principal(user.alias, user) if user else None

    def to_json(self) -> dict[str, dict[str, str]]:
        """The users-file content (see the module docstring)."""
        return {
            u.alias: {
                "password": u.password,
                "object_id": u.object_id,
                "display_name": u.display_name,
                "token": u.token,
            }
            for u in self._by_alias.values()
        }

    def write(self, users_file: Path, delegate_file: Path | None = None) -> None:
        """Write the users file (and the delegate file), owner-readable only: they hold secrets."""
        _write_private(users_file, self.to_json())
        if delegate_file is not None:
            d = self.delegate
            body = {"username": d.username, "password": d.password, "token": d.token}
            _write_private(delegate_file, body)


def _same(given: str, expected: str) -> bool:
    """Constant-time comparison (bytes: compare_digest rejects non-ASCII str)."""
    return secrets.compare_digest(given.encode(), expected.encode())


def _write_private(path: Path, body: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(body, f, indent=1)
        f.write("\n")
