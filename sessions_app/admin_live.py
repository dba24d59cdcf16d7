"""The admin's live channel: a WebSocket that keeps an admin page in step with the registry.

The page opens it at admin_site.LIVE_PATH with the admin's session cookie and says what it
shows (`watch`: a changelist with its query string, or the index). The handshake is
refused (HTTP 403) unless the Origin is the admin's own and the user is staff with *Can
view live session*. On each `registry.changed` nudge (live.py), and every
WSS_HEARTBEAT_SECONDS for the ages and heartbeats, the consumer renders the page's
results again (admin_pages.py), at most once per PUSH_INTERVAL_SECONDS, and sends only
what changed: rows by primary key, their order, the paginator, the filter sidebar's
choices. Frames: docs/protocol.md.
"""

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings
from django.contrib.auth import SESSION_KEY

from . import admin_pages, events, metrics
from .admin_pages import PageRefused
from .conf import app_settings
from .live import REGISTRY_GROUP

logger = logging.getLogger(__name__)

# At most this often a watching page is rendered again, however fast the registry churns.
PUSH_INTERVAL_SECONDS = 0.5
MAX_FRAME_BYTES = 8192
VIEW_PERMISSION = "sessions_app.view_livesession"


@dataclass(frozen=True, slots=True)
class Watch:
    """What a page shows: `changelist` of `model` with its query string, or the `index`."""

    page: str
    model: str = ""
    query: str = ""


def watch_parse(text: str | None) -> Watch:
    """Decode a `watch` frame, or raise PageRefused."""
    if text is None or len(text) > MAX_FRAME_BYTES:
        raise PageRefused("invalid_request", f"Send one JSON text frame of at most {MAX_FRAME_BYTES} bytes.")
    try:
        frame = json.loads(text)
    except ValueError:
        raise PageRefused("invalid_json", "The frame is not JSON.") from None
    if not isinstance(frame, dict) or frame.get("type") != "watch":
        raise PageRefused("invalid_request", 'The only frame is {"type": "watch", ...}.')
    page, model, query = frame.get("page"), frame.get("model", ""), frame.get("query", "")
    if page == "index":
        return Watch(page="index")
    if page != "changelist" or not isinstance(model, str) or not isinstance(query, str):
        raise PageRefused("invalid_request", 'Watch "index", or "changelist" with a model and a query string.')
    if model not in admin_pages.LIVE_MODELS:
        raise PageRefused("unknown_page", "This page is not live.")
    return Watch(page="changelist", model=model, query=query)


def origin_refusal(scope: dict[str, Any]) -> str | None:
    """Why the handshake's Origin is not the admin's own, as the admin's CSRF check would see it; None if it is."""
    headers = dict(scope.get("headers", ()))
    origin = headers.get(b"origin", b"").decode("latin-1")
    host = headers.get(b"host", b"").decode("latin-1")
    if not origin:
        return "no Origin header on the admin's live channel"
    if origin in settings.CSRF_TRUSTED_ORIGINS or (host and urlsplit(origin).netloc == host):
        return None
    return f"Origin {origin[:200]} is not this admin's host"


def user_refusal(scope: dict[str, Any]) -> str | None:
    """Why the handshake's user may not watch the registry; None if they may.

    They must be logged in to the admin (the session cookie, not an API token) as an active
    staff user with *Can view live session*.
    """
    user, session = scope.get("user"), scope.get("session")
    if user is None or not user.is_authenticated:
        return "not logged in to the admin"
    if session is None or session.get(SESSION_KEY) != str(user.pk):
        return "the admin's live channel takes the admin's login, not an API token"
    if not (user.is_active and user.is_staff and user.has_perm(VIEW_PERMISSION)):
        return "the user may not view live sessions"
    return None


class AdminLiveConsumer(AsyncJsonWebsocketConsumer):
    """One watching admin page: pushes what changed on it."""

    watch: Watch | None = None

    async def connect(self) -> None:
        """Refuse (403) a foreign Origin or a user without the view permission; else join the watchers."""
        refusal = origin_refusal(self.scope)
        reason = "origin"
        if refusal is None:
            refusal = await database_sync_to_async(user_refusal)(self.scope)
            reason = "auth"
        if refusal is not None:
            events.handshake_refused(self.scope, reason=reason, detail=refusal)
            await self.close()
            return
        self.sent: dict[str, Any] = {}
        self.wake = asyncio.Event()
        try:
            await self.channel_layer.group_add(REGISTRY_GROUP, self.channel_name)
        except Exception as error:  # the layer is down: the page still follows, at its timed refresh
            logger.warning("admin live page not subscribed to registry changes: %s", error)
        await self.accept()
        metrics.admin_page_watching(+1)
        self.pusher = asyncio.get_running_loop().create_task(self.push_loop(), name="wss-admin-live")

    async def disconnect(self, code: int) -> None:
        """Stop pushing and leave the watchers; never raises."""
        pusher = getattr(self, "pusher", None)
        if pusher is not None:
            metrics.admin_page_watching(-1)
            pusher.cancel()
            with contextlib.suppress(BaseException):
                await pusher
        with contextlib.suppress(Exception):
            await self.channel_layer.group_discard(REGISTRY_GROUP, self.channel_name)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """A `watch` frame: what this page shows; a bad frame gets an `error` frame."""
        try:
            self.watch = watch_parse(text_data)
        except PageRefused as error:
            await self.send_error(error)
            return
        self.sent = {}  # a new page: everything it shows is new to it
        self.wake.set()

    async def send_error(self, error: PageRefused) -> None:
        """The one place an error reaches the page: an `error` frame; the channel stays open."""
        await self.send_json({"type": "error", "code": error.code, "message": error.message})

    async def registry_changed(self, event: dict[str, Any]) -> None:
        """A nudge (live.py): render again soon."""
        self.wake.set()

    async def push_loop(self) -> None:
        """Render on a nudge or every heartbeat, at most every PUSH_INTERVAL_SECONDS; send what changed."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), app_settings.WSS_HEARTBEAT_SECONDS)
            self.wake.clear()
            if self.watch is not None:
                try:
                    await self.push(self.watch)
                except PageRefused as error:
                    await self.send_error(error)
                    self.watch = None
                except Exception as error:  # the registry is down, say: tell the page, try again later
                    logger.warning("admin live update failed: %s", error)
                    await self.send_error(PageRefused("unavailable", "The registry did not answer."))
            await asyncio.sleep(PUSH_INTERVAL_SECONDS)

    async def push(self, watch: Watch) -> None:
        """Render `watch` and send the difference from what the page already has."""
        if watch.page == "index":
            parts = await database_sync_to_async(admin_pages.glance_render_sync)()
            if parts != self.sent.get("index"):
                self.sent["index"] = parts
                await self.send_json({"type": "index", **parts})
                metrics.admin_frame_sent()
            return
        view = await database_sync_to_async(admin_pages.changelist_render_sync)(
            self.scope["user"],
            watch.model,
            watch.query,
            known=self.sent.get("keys", {}),
            table=not self.sent.get("order"),  # the page has no rows (or none from us yet): the whole table
        )
        if watch is not self.watch:
            return  # the page asked for something else meanwhile
        frame = changelist_frame(view, self.sent)
        if frame is not None:
            await self.send_json(frame)
            metrics.admin_frame_sent()


def changelist_frame(view: admin_pages.ChangelistView, sent: dict[str, Any]) -> dict[str, Any] | None:
    """The `changelist` frame that brings a page from `sent` (updated here) to `view`; None if nothing changed."""
    rows: dict[str, str] = sent.get("rows", {})
    changed = {pk: html for pk, html in view.rows.items() if rows.get(pk) != html}
    same = view.order == sent.get("order") and view.paginator == sent.get("paginator")
    if "order" in sent and not changed and same and view.filters == sent.get("filters"):
        return None
    frame: dict[str, Any] = {"type": "changelist", "order": view.order, "total": view.total}
    if not sent.get("order") or not view.order:
        frame["table"] = view.table  # the results block appears or goes: send it whole
    else:
        frame["rows"] = changed
    if view.paginator != sent.get("paginator"):
        frame["paginator"] = view.paginator
    if view.filters != sent.get("filters"):
        frame["filters"] = view.filters
    kept = {pk: html for pk, html in rows.items() if pk in view.keys}
    sent.update(
        rows={**kept, **view.rows}, keys=view.keys, order=view.order, paginator=view.paginator, filters=view.filters
    )
    return frame
