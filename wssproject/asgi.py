"""ASGI entry point: `daphne wssproject.asgi:application` (or uvicorn).

HTTP goes to Django; WebSockets pass the origin check, then authentication (session
cookie or API token, see sessions_app/middleware.py), then reach sessions_app's routes.
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "wssproject.settings")
# Django must be set up before anything imports models.
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from sessions_app.middleware import WebSocketAuthStack  # noqa: E402
from sessions_app.origin import SessionOriginValidator  # noqa: E402
from sessions_app.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": SessionOriginValidator(WebSocketAuthStack(URLRouter(websocket_urlpatterns))),
    }
)
