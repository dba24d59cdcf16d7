"""ASGI entry point: `daphne wssproject.asgi:application` (or uvicorn).

At import, the system checks run (sessions_app/startup.py): a configuration error stops
the server, whichever it is, before it serves anything. Every request first has its client
address resolved (X-Forwarded-For only from WSS_TRUSTED_PROXIES: sessions_app/addresses.py).
HTTP goes to Django; WebSockets pass the origin check, then authentication (session
cookie, skipped for handshakes without one: sessions_app/auth_fastpath.py; API token and
WSS_REQUIRE_AUTH: sessions_app/middleware.py), then reach sessions_app's routes. The
process's start and stop (instance registration, heartbeat, graceful shutdown) hook into
uvicorn's lifespan or daphne's reactor.
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "wssproject.settings")
# Django must be set up before anything imports models.
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from sessions_app import server_hooks  # noqa: E402
from sessions_app.startup import startup_check  # noqa: E402

startup_check()

from sessions_app.addresses import ForwardedClientMiddleware  # noqa: E402
from sessions_app.auth_fastpath import SessionCookieAuthMiddleware  # noqa: E402
from sessions_app.middleware import ApiTokenAuthMiddleware  # noqa: E402
from sessions_app.origin import SessionOriginValidator  # noqa: E402
from sessions_app.routing import websocket_urlpatterns  # noqa: E402

application = ForwardedClientMiddleware(
    ProtocolTypeRouter(
        {
            "http": django_asgi_app,
            "websocket": SessionOriginValidator(
                SessionCookieAuthMiddleware(ApiTokenAuthMiddleware(URLRouter(websocket_urlpatterns)))
            ),
            # uvicorn (and other lifespan servers): register, heartbeat, retire on SIGTERM/SIGINT.
            "lifespan": server_hooks.lifespan_app,
        }
    )
)
# daphne has no lifespan: the same start and stop hook into its Twisted reactor.
server_hooks.daphne_install()
