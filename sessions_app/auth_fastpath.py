"""WebSocket authentication that costs nothing for clients without a Django session.

Channels' AuthMiddlewareStack (cookies, session, user) copies the scope at each layer and
hops to a database thread on every handshake to look the user up. A handshake without
the session cookie can only be anonymous, so it goes straight to the inner application
with `cookies` parsed and `user` set to AnonymousUser (and no `session` in the scope);
only handshakes that carry the session cookie take the full stack, so an anonymous
connection holds no copies of its scope (docs/decisions.md).
"""

from typing import Any

from channels.auth import AuthMiddlewareStack
from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from django.http.cookie import parse_cookie


class SessionCookieAuthMiddleware:
    """AuthMiddlewareStack for handshakes with a session cookie, a direct anonymous path otherwise."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.full = AuthMiddlewareStack(inner)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        """Take the full stack for a session cookie, the direct anonymous path otherwise."""
        cookies: dict[str, str] = {}
        for name, value in scope.get("headers", ()):
            if name == b"cookie":
                cookies = parse_cookie(value.decode("latin1"))
                break
        if settings.SESSION_COOKIE_NAME in cookies:
            return await self.full(scope, receive, send)
        return await self.inner(dict(scope, cookies=cookies, user=AnonymousUser()), receive, send)
