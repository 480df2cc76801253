"""Access to the HTTP API: one bearer token, compared in constant time.

The token comes from ``NAS_API_TOKEN`` or a file (``nas serve --token-file``). Without either,
``nas serve`` makes a random one and prints it, and only on a loopback address: a server that
other machines can reach never runs with a token nobody chose.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

from fastapi import HTTPException, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from nas.errors import NasError

TOKEN_ENV = "NAS_API_TOKEN"
MIN_TOKEN_LENGTH = 16

#: The security scheme the OpenAPI schema declares; errors are ours, not FastAPI's.
bearer_scheme = HTTPBearer(auto_error=False, description="`Authorization: Bearer TOKEN`")


def check_token(token: str) -> str:
    """A token long enough to resist guessing, in printable ASCII (it travels in a header)."""
    token = token.strip()
    if len(token) < MIN_TOKEN_LENGTH or not token.isascii() or not token.isprintable():
        raise NasError(
            f"the API token must be at least {MIN_TOKEN_LENGTH} printable ASCII characters"
        )
    return token


def load_token(token_file: str | None, host: str) -> tuple[str, bool]:
    """The server's token and whether it was generated here.

    ``token_file``, else ``$NAS_API_TOKEN``; with neither, a random token, on loopback only.
    """
    if token_file:
        try:
            return check_token(Path(token_file).read_text(encoding="utf-8")), False
        except OSError as error:
            raise NasError(f"cannot read token file {token_file}: {error.strerror}") from None
    if os.environ.get(TOKEN_ENV):
        return check_token(os.environ[TOKEN_ENV]), False
    if not is_loopback(host):
        raise NasError(
            f"refusing to listen on {host} without a token: set {TOKEN_ENV} or pass "
            "--token-file (without one, nas serve binds 127.0.0.1 only)"
        )
    return secrets.token_urlsafe(24), True


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def token_dependency(token: str) -> Callable[..., None]:
    """A FastAPI dependency that lets a request through only with ``Bearer <token>``."""
    expected = check_token(token).encode()

    def require_token(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)],
    ) -> None:
        given = credentials.credentials.encode("utf-8", "replace") if credentials else b""
        # compare_digest takes as long for a wrong token of any content as for a right one
        if not hmac.compare_digest(given, expected):
            raise HTTPException(
                status_code=401,
                detail="missing or wrong bearer token (Authorization: Bearer TOKEN)",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return require_token
