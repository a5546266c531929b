"""Who may use an HTTP listener: bearer tokens (RFC 6750) and TLS with client certificates.

Tokens are compared in constant time: each accepted token is kept as its SHA-256 digest, the
presented one is hashed the same way and compared with every accepted digest by
`hmac.compare_digest`, so neither the length nor the content of a token shows in the timing.
A refusal is a 401 problem (ingest.ops.problems) with the `WWW-Authenticate` challenge.
"""

from __future__ import annotations

import hashlib
import hmac
import ssl
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web

from ingest.errors import ConfigError
from ingest.ops.problems import Handler, problem
from ingest.settings import Secret


class BearerAuth:
    """The bearer tokens a listener accepts; none: every request is let through."""

    def __init__(self, tokens: Sequence[Secret], realm: str) -> None:
        self._digests = [_digest(t.reveal()) for t in tokens]
        self._realm = realm

    @property
    def required(self) -> bool:
        return bool(self._digests)

    def refusal(self, request: web.Request) -> web.Response | None:
        """None if the request may go on, else the 401 to answer."""
        if not self._digests:
            return None
        header = request.headers.get("Authorization")
        if header is None:
            return self._refuse(None, "this API needs a bearer token (Authorization: Bearer …)")
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return self._refuse("invalid_request", "the Authorization header is not `Bearer <t>`")
        presented = _digest(token.strip())
        accepted = False
        for digest in self._digests:  # every one compared: the timing tells nothing
            accepted |= hmac.compare_digest(digest, presented)
        if not accepted:
            return self._refuse("invalid_token", "the bearer token is not accepted")
        return None

    def guard(self, handler: Handler) -> Handler:
        """`handler` behind the token check."""

        async def guarded(request: web.Request) -> web.StreamResponse:
            return self.refusal(request) or await handler(request)

        return guarded

    def _refuse(self, error: str | None, detail: str) -> web.Response:
        challenge = f'Bearer realm="{self._realm}"'
        if error is not None:
            challenge += f', error="{error}"'
        return problem(
            401,
            detail,
            kind="unauthorized",
            title="Authentication required",
            headers={"WWW-Authenticate": challenge},
        )


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


def server_tls(cert_file: Path, key_file: Path, client_ca_file: Path | None) -> ssl.SSLContext:
    """TLS for a listener (1.2 at least); with `client_ca_file`, clients must present a
    certificate signed by that CA (mutual TLS)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(f"read API TLS: cannot load {cert_file} / {key_file}: {e}") from e
    if client_ca_file is not None:
        try:
            context.load_verify_locations(cafile=client_ca_file)
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(f"read API TLS: cannot load client CA {client_ca_file}: {e}") from e
        context.verify_mode = ssl.CERT_REQUIRED
    return context
