"""Baseline: the leanest Channels consumer with a dict registry, the framework's floor.

Django settings with only what Channels needs (bench/floor_settings.py: no database, no
middleware, Channels' stock in-memory layer), no validation: `new_session` gets a reply,
a second one `session_exists`. GET /registry-count answers with the number of live
sessions, for the bench. Serve as `daphne bench.baseline_channels:application`.
"""

import json
import os

import django

os.environ["DJANGO_SETTINGS_MODULE"] = "bench.floor_settings"
django.setup()

from channels.generic.websocket import AsyncWebsocketConsumer  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import path  # noqa: E402

from bench.baseline_websockets import answer  # noqa: E402

REGISTRY: dict[str, str] = {}


class DictConsumer(AsyncWebsocketConsumer):
    """At most one session per connection, kept in a dict."""

    session_id: str | None = None

    async def receive(self, text_data=None, bytes_data=None):
        if text_data is None:
            return
        reply, session_id = answer(text_data, self.session_id)
        if session_id != self.session_id:
            self.session_id = session_id
            REGISTRY[session_id] = self.channel_name
        await self.send(text_data=json.dumps(reply, separators=(",", ":")))

    async def disconnect(self, code):
        if self.session_id is not None:
            REGISTRY.pop(self.session_id, None)


async def registry_count(scope, receive, send):
    """A bare ASGI HTTP app: the count of live sessions, for every path."""
    body = f"{len(REGISTRY)}\n".encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})


application = ProtocolTypeRouter({"http": registry_count, "websocket": URLRouter([path("ws", DictConsumer.as_asgi())])})
