"""The admin's live channel through the real ASGI app: who may watch, what a page is sent, how often."""

import asyncio
import json
import re

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.contrib.auth.models import Permission

from sessions_app import admin_live
from sessions_app.live import REGISTRY_GROUP

from .communicators import (
    admin_frame_until,
    admin_live_connect,
    admin_session_cookie,
    admin_watch,
    detached_session,
    open_session,
)

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def pages_refresh_only_when_nudged(settings) -> None:
    """No timed refresh within a test: what moves a page is the registry's nudge."""
    settings.WSS_HEARTBEAT_SECONDS = 60
    settings.WSS_INSTANCE_TIMEOUT_SECONDS = 300  # the system checks want at least two heartbeats


def staff(django_user_model, name: str, *codenames: str):
    user = django_user_model.objects.create_user(name, password="pw", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    return user


@pytest.fixture
async def viewer_cookie(django_user_model) -> str:
    """The admin cookie of a staff user with *Can view live session* (and nothing else)."""
    user = await sync_to_async(staff)(django_user_model, "viewer", "view_livesession")
    return await admin_session_cookie(user)


def listed(frame: dict, session_id: str) -> bool:
    return frame["type"] == "changelist" and session_id in frame["order"]


async def test_the_live_channel_refuses_an_anonymous_user():
    accepted, _ = await admin_live_connect(cookie=None)
    assert not accepted


async def test_the_live_channel_refuses_staff_without_the_view_permission(django_user_model):
    user = await sync_to_async(staff)(django_user_model, "staff", "view_serverinstance", "delete_livesession")
    accepted, _ = await admin_live_connect(await admin_session_cookie(user))
    assert not accepted


async def test_the_live_channel_refuses_an_api_token_even_of_a_viewer(django_user_model):
    from channels.testing import WebsocketCommunicator

    from sessions_app.tokens import token_create
    from wssproject.asgi import application

    user = await sync_to_async(staff)(django_user_model, "viewer", "view_livesession")
    _, raw = await sync_to_async(token_create)(user=user, name="script")
    headers = [
        (b"host", b"testserver"),
        (b"origin", b"http://testserver"),
        (b"authorization", f"Bearer {raw}".encode()),
    ]
    accepted, _ = await WebsocketCommunicator(application, "/admin/live/", headers=headers).connect()
    assert not accepted


async def test_the_live_channel_refuses_a_foreign_or_missing_origin(viewer_cookie):
    for origin in ("http://evil.example", None):
        accepted, _ = await admin_live_connect(viewer_cookie, origin=origin)
        assert not accepted, origin
    accepted, comm = await admin_live_connect(viewer_cookie)
    assert accepted
    await comm.disconnect()


async def test_a_watching_changelist_gets_a_session_that_opens_and_loses_it_when_it_ends(viewer_cookie, workspace):
    accepted, admin = await admin_live_connect(viewer_cookie)
    assert accepted
    first = await admin_watch(admin)
    assert first == {
        "type": "changelist",
        "order": [],
        "total": 0,
        "table": "",
        "paginator": first["paginator"],
        "filters": first["filters"],
    }
    assert "0 live sessions" in first["paginator"]
    assert first["filters"].startswith('<nav id="changelist-filter"')

    comm, reply = await open_session(workspace, ok=True)
    session_id = reply["session_id"]
    frame = await admin_frame_until(admin, lambda f: listed(f, session_id))
    assert session_id in frame["table"]  # the table appears whole: Django's results block
    assert f'title="{session_id}">{session_id[:8]}<' in frame["table"]
    assert "1 live session" in frame["paginator"]

    await comm.disconnect()
    frame = await admin_frame_until(admin, lambda f: f["type"] == "changelist" and not f["order"])
    assert frame["table"] == ""
    await admin.disconnect()


async def test_a_detach_changes_the_row_in_place(viewer_cookie, workspace):
    kept, _ = await open_session(workspace, ok=True)
    comm, reply = await open_session(workspace, fields={"resumable": True}, ok=True)
    session_id = reply["session_id"]
    accepted, admin = await admin_live_connect(viewer_cookie)
    assert accepted
    first = await admin_watch(admin)
    assert session_id in first["order"] and "live-badge-attached" in first["table"]

    await comm.disconnect(code=1006)  # a drop: the session waits for a resume
    frame = await admin_frame_until(admin, lambda f: f["type"] == "changelist" and session_id in f.get("rows", {}))
    assert list(frame["rows"]) == [session_id]  # only the row that changed is sent
    assert "filters" not in frame  # nor is the filter sidebar: its choices are the same
    assert "live-badge-detached" in frame["rows"][session_id] and "left" in frame["rows"][session_id]
    assert sorted(frame["order"]) == sorted(first["order"])
    await kept.disconnect()
    await admin.disconnect()


async def test_a_new_server_instance_shows_in_the_instance_filter_without_a_reload(
    viewer_cookie, workspace, instance_with_sessions
):
    comm, _ = await open_session(workspace, ok=True)  # held by this process's instance
    accepted, admin = await admin_live_connect(viewer_cookie)
    assert accepted
    first = await admin_watch(admin, query="?state=attached")
    assert first["filters"].startswith('<nav id="changelist-filter"')
    assert "By server instance" in first["filters"] and "other-host:7" not in first["filters"]

    # Another server starts and opens a session: its row, and its nudge to the watchers.
    await sync_to_async(instance_with_sessions)(workspaces=["/srv/ws/elsewhere"], host="other-host", pid=7)
    await get_channel_layer().group_send(REGISTRY_GROUP, {"type": "registry.changed"})
    frame = await admin_frame_until(admin, lambda f: "other-host:7" in f.get("filters", ""))
    assert re.search(r'<a href="\?instance__id__exact=[0-9a-f-]+&amp;state=attached">other-host:7 \(', frame["filters"])
    # The page's own filter stays chosen in the new sidebar.
    assert re.search(r'<li class="selected">\s*<a href="\?state=attached">attached</a>', frame["filters"])
    await comm.disconnect()
    await admin.disconnect()


async def test_the_index_count_follows_the_registry(viewer_cookie, workspace):
    accepted, admin = await admin_live_connect(viewer_cookie)
    assert accepted
    first = await admin_watch(admin, page="index")
    assert first["type"] == "index" and first["title"].endswith("0 live sessions (0 detached)")
    comm, _ = await open_session(workspace, ok=True)
    frame = await admin_frame_until(admin, lambda f: f["title"].endswith("1 live session (0 detached)"))
    assert "<svg" in frame["glance"] and '<td class="live-count">1</td>' in frame["glance"]  # per instance
    await comm.disconnect()
    await admin_frame_until(admin, lambda f: f["title"].endswith("0 live sessions (0 detached)"))
    await admin.disconnect()


async def test_filters_search_and_sort_of_the_page_are_applied(viewer_cookie, workspace, tmp_path):
    other = tmp_path / "other-project"
    other.mkdir()
    mine, _ = await open_session(workspace, ok=True)
    theirs, reply = await open_session(other, ok=True)
    accepted, admin = await admin_live_connect(viewer_cookie)
    assert accepted
    frame = await admin_watch(admin, query="?q=other-project&state=attached&o=-2")
    assert frame["order"] == [reply["session_id"]]
    for comm in (mine, theirs):
        await comm.disconnect()
    await admin.disconnect()


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("not json", "invalid_json"),
        ('{"type": "subscribe"}', "invalid_request"),
        ('{"type": "watch", "page": "changelist", "model": "apitoken"}', "unknown_page"),
        ('{"type": "watch", "page": "changelist", "model": "livesession", "query": 7}', "invalid_request"),
        (
            '{"type": "watch", "page": "changelist", "model": "livesession", "query": "?no_such_field=1"}',
            "invalid_query",
        ),
        ("x" * 9000, "invalid_request"),
    ],
)
async def test_a_bad_frame_gets_an_error_frame_and_the_channel_stays_open(viewer_cookie, text, code):
    accepted, admin = await admin_live_connect(viewer_cookie)
    assert accepted
    await admin.send_to(text_data=text)
    frame = await admin.receive_json_from(timeout=5)
    assert frame["type"] == "error" and frame["code"] == code
    assert (await admin_watch(admin, page="index"))["type"] == "index"  # still serving
    await admin.disconnect()


async def test_a_binary_frame_gets_an_error_frame(viewer_cookie):
    accepted, admin = await admin_live_connect(viewer_cookie)
    assert accepted
    await admin.send_to(bytes_data=b"\x00\x01")
    assert (await admin.receive_json_from(timeout=5))["code"] == "invalid_request"
    await admin.disconnect()


async def test_instances_page_needs_its_own_view_permission(viewer_cookie):
    accepted, admin = await admin_live_connect(viewer_cookie)
    assert accepted
    frame = await admin_watch(admin, model="serverinstance")
    assert frame == {"type": "error", "code": "forbidden", "message": "You may not view this page."}
    await admin.disconnect()


async def test_churn_reaches_a_watching_page_coalesced(viewer_cookie, workspace):
    accepted, admin = await admin_live_connect(viewer_cookie)
    assert accepted
    await admin_watch(admin)
    loop = asyncio.get_running_loop()
    started = loop.time()
    layer = get_channel_layer()
    for _ in range(100):  # sessions open and end as fast as this process can; the last one stays
        comm, reply = await open_session(workspace, ok=True)
        # As if many processes churned: each of them nudges the watchers on its own.
        await layer.group_send(REGISTRY_GROUP, {"type": "registry.changed"})
        await comm.disconnect()
        await layer.group_send(REGISTRY_GROUP, {"type": "registry.changed"})
    kept, reply = await open_session(workspace, ok=True)
    churn_seconds = loop.time() - started
    frames = []
    while not await admin.receive_nothing(timeout=1.5):  # until the page has been quiet for 1.5 s
        frames.append(await admin.receive_json_from())
    # At most one render per PUSH_INTERVAL_SECONDS while the churn lasted, plus the one after it.
    bound = churn_seconds / admin_live.PUSH_INTERVAL_SECONDS + 2
    assert 1 <= len(frames) <= bound, (len(frames), churn_seconds)
    assert frames[-1]["order"] == [reply["session_id"]]  # the last frame shows the end state
    await kept.disconnect()
    await admin.disconnect()


async def test_the_frame_is_json_the_page_can_use(viewer_cookie, workspace):
    """Every frame was validated against docs/asyncapi.yaml by conftest; here: the rows are table rows."""
    comm, _ = await open_session(workspace, ok=True)
    accepted, admin = await admin_live_connect(viewer_cookie)
    assert accepted
    frame = await admin_watch(admin)
    assert frame["table"].count("<tr>") == 2  # the header row and the session's row
    assert json.loads(json.dumps(frame)) == frame
    await comm.disconnect()
    await admin.disconnect()


async def test_a_closed_channel_leaves_the_watchers(viewer_cookie):
    layer = get_channel_layer()
    if not hasattr(layer, "groups"):
        pytest.skip("reads the in-memory layer's groups; the consumer's code is the same on Redis")
    watchers = layer.groups.setdefault(REGISTRY_GROUP, {})
    before = set(watchers)
    accepted, admin = await admin_live_connect(viewer_cookie)
    assert accepted
    assert len(set(watchers) - before) == 1
    await admin.disconnect()
    assert set(watchers) - before == set()


async def test_a_terminate_from_the_list_shows_on_the_page(viewer_cookie, workspace, django_user_model):
    from sessions_app.audit import sessions_terminate_audited

    attached, reply = await open_session(workspace, ok=True)
    detached = (await detached_session(workspace))["session_id"]
    accepted, admin = await admin_live_connect(viewer_cookie)
    assert accepted
    first = await admin_watch(admin)
    assert set(first["order"]) == {reply["session_id"], detached}
    operator = await sync_to_async(django_user_model.objects.create_superuser)("operator", "o@example.com", "pw")
    while not await admin.receive_nothing(timeout=1.5):  # the detach's own nudge has come and gone
        await admin.receive_json_from()
    # What the admin action runs, in a worker thread as the admin's request does: first the
    # detached session (its row is removed here), then the attached one (its consumer ends it).
    terminate = sync_to_async(sessions_terminate_audited)
    assert await terminate([detached], via="admin", user=operator) == {"removed": 1}
    await admin_frame_until(admin, lambda f: f["type"] == "changelist" and f["order"] == [reply["session_id"]])
    assert await terminate([reply["session_id"]], via="admin", user=operator) == {"delivered": 1}
    await admin_frame_until(admin, lambda f: f["type"] == "changelist" and f["order"] == [])
    await attached.disconnect()
    await admin.disconnect()


async def test_a_page_is_served_while_the_channel_layer_is_down(viewer_cookie, unreachable_channel_layer):
    accepted, admin = await admin_live_connect(viewer_cookie)
    assert accepted
    assert (await admin_watch(admin, page="index"))["type"] == "index"  # its timed refresh still works
    await admin.disconnect()


async def test_watching_pages_and_their_updates_are_counted(viewer_cookie, workspace):
    from prometheus_client import REGISTRY

    def sample(name: str) -> float:
        return REGISTRY.get_sample_value(name) or 0.0

    pages, frames = sample("wss_admin_live_pages"), sample("wss_admin_live_frames_total")
    accepted, admin = await admin_live_connect(viewer_cookie)
    assert accepted
    assert sample("wss_admin_live_pages") == pages + 1
    await admin_watch(admin)
    comm, reply = await open_session(workspace, ok=True)
    await admin_frame_until(admin, lambda f: reply["session_id"] in f.get("order", ()))
    assert sample("wss_admin_live_frames_total") == frames + 2
    await comm.disconnect()
    await admin.disconnect()
    assert sample("wss_admin_live_pages") == pages
