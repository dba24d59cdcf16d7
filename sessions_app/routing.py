"""WebSocket URL routes."""

from channels.security.websocket import WebsocketDenier
from django.urls import re_path

from .admin_live import AdminLiveConsumer
from .consumers import SessionConsumer

websocket_urlpatterns = [
    re_path(r"^ws/?$", SessionConsumer.as_asgi()),
    # The admin's live channel (admin_site.LIVE_PATH): its pages follow the registry.
    re_path(r"^admin/live/?$", AdminLiveConsumer.as_asgi()),
    # Any other path is refused at the handshake (403) instead of raising in the router.
    re_path(r"", WebsocketDenier.as_asgi()),
]
