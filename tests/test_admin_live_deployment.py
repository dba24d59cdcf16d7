"""The admin's live channel across real server processes on PostgreSQL + Redis.

A session opened on process A appears on an admin page served by process B; the
index's last hour counts what both processes opened and ended.
"""

import asyncio
import json
import time

import pytest
import websockets
from asgiref.sync import sync_to_async
from django.contrib.auth.models import Permission

from .communicators import admin_session_cookie, ws_connect_session

pytestmark = [
    pytest.mark.production,
    pytest.mark.live,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("production_services"),
]


def viewer(django_user_model):
    user = django_user_model.objects.create_user("viewer", password="pw", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_livesession"))
    return user


async def admin_page(server, cookie: str, **watch) -> websockets.ClientConnection:
    """The live channel of an admin page served by `server`, as the page opens it, watching `watch`."""
    origin = server.http_url
    ws = await websockets.connect(
        f"ws://127.0.0.1:{server.port}/admin/live/",
        additional_headers={"Cookie": cookie, "Origin": origin},
        open_timeout=15,
    )
    await ws.send(json.dumps({"type": "watch", **watch}))
    return ws


async def frame_until(ws: websockets.ClientConnection, predicate, timeout: float) -> dict:
    """Read frames until one satisfies `predicate`; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            frame = json.loads(await asyncio.wait_for(ws.recv(), left))
        except TimeoutError:
            break
        if predicate(frame):
            return frame
    pytest.fail(f"no frame matched within {timeout:g} s")


async def test_a_session_opened_on_one_process_appears_on_an_admin_page_of_another(
    servers, workspace, django_user_model
):
    # The default heartbeat (5 s): the page's own refresh cannot be what brings the session within 2 s.
    slow = {"WSS_HEARTBEAT_SECONDS": "5", "WSS_INSTANCE_TIMEOUT_SECONDS": "25"}
    a, b = servers(**slow), servers(**slow)
    cookie = await admin_session_cookie(await sync_to_async(viewer)(django_user_model))
    page = await admin_page(b, cookie, page="changelist", model="livesession", query="")
    await frame_until(page, lambda f: f["type"] == "changelist", timeout=10)

    client, session_id = await ws_connect_session(a.url, workspace)
    started = time.monotonic()
    frame = await frame_until(page, lambda f: session_id in f.get("order", ()), timeout=2)
    appeared = time.monotonic() - started
    assert session_id[:8] in (frame.get("table") or frame["rows"][session_id])

    await client.close()
    await frame_until(page, lambda f: f["type"] == "changelist" and session_id not in f["order"], timeout=2)
    await page.close()
    print(f"appeared on the other process's page after {appeared:.2f} s")


async def test_the_index_counts_the_last_hour_of_every_process(servers, workspace, django_user_model):
    a, b = servers(), servers()
    cookie = await admin_session_cookie(await sync_to_async(viewer)(django_user_model))
    for server in (a, b, a):
        client, _ = await ws_connect_session(server.url, workspace)
        await client.close()
    page = await admin_page(b, cookie, page="index")
    # Each process writes its counts on its heartbeat (1 s here); the page re-reads them on its own.
    frame = await frame_until(page, lambda f: "Last hour: 3 opened, 3 ended" in f.get("glance", ""), timeout=10)
    assert frame["title"].endswith("0 live sessions (0 detached)")
    await page.close()
