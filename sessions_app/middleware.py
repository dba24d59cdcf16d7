"""WebSocket handshake authentication: API tokens, and WSS_REQUIRE_AUTH.

Runs inside SessionCookieAuthMiddleware (auth_fastpath.py), which has already set `scope["user"]` from the
Django session cookie. A token, when presented, takes precedence:

- `Authorization: Bearer <token>` (scripts, servers), or
- the WebSocket subprotocol `bearer.<token>`, offered next to `wss-sessions.v1`
  (browsers cannot set headers; the server selects `wss-sessions.v1`, never echoes the token).

A presented token that is unknown or revoked is refused even when authentication is
optional: a client holding a bad credential should learn it at once. With WSS_REQUIRE_AUTH
on, a handshake without a logged-in user or a valid token is refused. With neither
WSS_REQUIRE_AUTH nor WSS_WORKSPACE_ROOTS set (the service would open any directory for
anyone), only loopback clients are served anonymously: a client from beyond loopback needs
a user or a token too (docs/security.md). Every refusal is an HTTP 403 and one warning
line, without the token.
"""

import logging
from collections.abc import Iterable
from typing import Any

from channels.db import database_sync_to_async
from channels.security.websocket import WebsocketDenier
from django.db import DatabaseError

from . import events
from .addresses import client_is_loopback
from .conf import app_settings
from .tokens import bearer_credential, token_authenticate

logger = logging.getLogger(__name__)

TOKEN_SUBPROTOCOL_PREFIX = "bearer."


def bearer_from_headers(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, if any."""
    for name, value in headers:
        if name.lower() == b"authorization":
            return bearer_credential(value.decode("latin-1"))
    return None


def bearer_from_subprotocols(subprotocols: Iterable[str]) -> str | None:
    """The token offered as a `bearer.<token>` subprotocol, if any."""
    for offered in subprotocols:
        if offered.startswith(TOKEN_SUBPROTOCOL_PREFIX) and len(offered) > len(TOKEN_SUBPROTOCOL_PREFIX):
            return offered[len(TOKEN_SUBPROTOCOL_PREFIX) :]
    return None


class ApiTokenAuthMiddleware:
    """Authenticate a presented API token; enforce WSS_REQUIRE_AUTH; refuse with 403."""

    def __init__(self, application: Any) -> None:
        self.application = application

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        """Resolve a presented token, or enforce WSS_REQUIRE_AUTH; refuse with 403."""
        raw = bearer_from_headers(scope.get("headers", [])) or bearer_from_subprotocols(scope.get("subprotocols", []))
        if raw is not None:
            try:
                user = await database_sync_to_async(token_authenticate)(raw)
            except DatabaseError as error:
                return await self.refuse(scope, receive, send, f"the token could not be checked ({error})")
            if user is None:
                return await self.refuse(scope, receive, send, "invalid or revoked API token")
            scope = {**scope, "user": user}
        elif app_settings.WSS_REQUIRE_AUTH and not getattr(scope.get("user"), "is_authenticated", False):
            return await self.refuse(scope, receive, send, "no logged-in user or API token and WSS_REQUIRE_AUTH is on")
        elif anonymous_refused_beyond_loopback(scope) and not getattr(scope.get("user"), "is_authenticated", False):
            return await self.refuse(
                scope,
                receive,
                send,
                "an anonymous client beyond loopback, and neither WSS_WORKSPACE_ROOTS nor WSS_REQUIRE_AUTH is set",
            )
        return await self.application(scope, receive, send)

    @staticmethod
    async def refuse(scope: dict[str, Any], receive: Any, send: Any, reason: str) -> Any:
        """Log one warning line, count it, and deny the handshake (HTTP 403)."""
        events.handshake_refused(scope, reason="auth", detail=reason)
        return await WebsocketDenier()(scope, receive, send)


def unrestricted() -> bool:
    """Neither authentication nor workspace roots: anyone could open any directory."""
    return not app_settings.WSS_REQUIRE_AUTH and not app_settings.WSS_WORKSPACE_ROOTS


def anonymous_refused_beyond_loopback(scope: dict[str, Any]) -> bool:
    """An unrestricted server serves anonymous clients on loopback only."""
    return unrestricted() and not client_is_loopback(scope)
