"""Origin policy for WebSocket handshakes.

Browsers always send `Origin`; a browser origin must match ALLOWED_HOSTS or be listed
exactly in WSS_ALLOWED_ORIGINS. Command-line and server-side clients send none and are
allowed unless WSS_REQUIRE_ORIGIN is on. Channels' own validator refuses a missing
Origin and refuses silently; this one logs every refusal with the origin.
"""

from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any
from urllib.parse import ParseResult

from channels.security.websocket import OriginValidator
from django.conf import settings

from . import events
from .conf import app_settings

# The handshake being decided, so a refusal is logged with its client address.
_handshake_scope: ContextVar[dict[str, Any] | None] = ContextVar("handshake_scope", default=None)


class SessionOriginValidator(OriginValidator):
    """OriginValidator that allows a missing Origin by default and logs refusals."""

    def __init__(self, application: Any) -> None:
        super().__init__(application, allowed_origins=AllowedOrigins())

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Decide as Channels does, remembering the scope for the refusal's log line."""
        _handshake_scope.set(scope)
        return await super().__call__(scope, receive, send)

    def valid_origin(self, parsed_origin: ParseResult | None) -> bool:
        """Decide on one handshake, reading the settings each time."""
        if parsed_origin is None:
            if app_settings.WSS_REQUIRE_ORIGIN:
                events.handshake_refused(
                    _handshake_scope.get() or {},
                    reason="origin",
                    detail="no Origin header and WSS_REQUIRE_ORIGIN is on",
                )
                return False
            return True
        if self.validate_origin(parsed_origin):
            return True
        events.handshake_refused(_handshake_scope.get() or {}, reason="origin", detail=parsed_origin.geturl()[:200])
        return False


class AllowedOrigins:
    """The origin patterns in force: WSS_ALLOWED_ORIGINS and ALLOWED_HOSTS, read at each handshake."""

    def __iter__(self) -> Iterator[str]:
        yield from app_settings.WSS_ALLOWED_ORIGINS
        yield from allowed_host_patterns()


def allowed_host_patterns() -> list[str]:
    """ALLOWED_HOSTS as origin patterns; in DEBUG with none set, Django's own local defaults."""
    hosts = list(settings.ALLOWED_HOSTS)
    if settings.DEBUG and not hosts:
        hosts = [".localhost", "127.0.0.1", "[::1]"]
    return hosts
