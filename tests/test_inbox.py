"""The inbox decides on frames as they arrive, and answers them in their turn, in order."""

import threading

import pytest
from channels.testing import WebsocketCommunicator

from sessions_app import resolver
from sessions_app.workspaces import workspace_resolve

from .polling import wait_until

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def slow_first_path(monkeypatch, settings):
    """`/slow` keeps its resolver thread until released, so the consumer waits in new_session; yields
    an event set once the consumer is waiting."""
    settings.WSS_WORKSPACE_RESOLVE_TIMEOUT_SECONDS = 1
    entered, release = threading.Event(), threading.Event()

    def resolve(raw_path: str, **kwargs) -> str:
        if raw_path == "/slow":
            entered.set()
            release.wait(timeout=10)
        return workspace_resolve(raw_path, **kwargs)

    monkeypatch.setattr(resolver, "blocking_resolve", resolve)
    yield entered
    release.set()


async def test_a_backlog_past_the_bound_is_closed_4429_after_the_earlier_frames_are_answered(
    slow_first_path, settings, workspace
):
    from wssproject.asgi import application

    settings.WSS_MAX_QUEUED_FRAMES = 3
    settings.WSS_RATE_LIMIT = 0  # only the backlog bound is at work
    comm = WebsocketCommunicator(application, "/ws")
    assert (await comm.connect())[0]
    await comm.send_json_to({"type": "new_session", "workspace_dir": "/slow", "request_id": 0})
    await wait_until(slow_first_path.is_set, 5, what="the consumer waiting on /slow")
    for n in range(1, 8):
        await comm.send_json_to({"type": "new_session", "workspace_dir": str(workspace), "request_id": n})
    replies = [await comm.receive_json_from(timeout=5) for _ in range(5)]
    assert [(reply.get("request_id"), reply.get("code", reply["type"])) for reply in replies] == [
        (0, "unavailable"),
        (1, "new_session"),
        (2, "session_exists"),
        (3, "session_exists"),
        (None, "rate_limit_exceeded"),
    ]
    assert (await comm.receive_output(timeout=5))["code"] == 4429
    assert await comm.receive_nothing(timeout=0.3)  # frames 5 to 7 were dropped unread


async def test_a_frame_over_the_limit_is_refused_on_arrival_in_its_turn(slow_first_path, settings, workspace):
    from wssproject.asgi import application

    settings.WSS_MAX_MESSAGE_BYTES = 1000
    comm = WebsocketCommunicator(application, "/ws")
    assert (await comm.connect())[0]
    await comm.send_json_to({"type": "new_session", "workspace_dir": "/slow", "request_id": 0})
    await wait_until(slow_first_path.is_set, 5, what="the consumer waiting on /slow")
    await comm.send_to(text_data="x" * 5000)
    await comm.send_json_to({"type": "new_session", "workspace_dir": str(workspace), "request_id": 2})
    first, second = [await comm.receive_json_from(timeout=5) for _ in range(2)]
    assert (first["request_id"], first["code"]) == (0, "unavailable")
    assert second["code"] == "message_too_large"
    assert (await comm.receive_output(timeout=5))["code"] == 4413
    assert await comm.receive_nothing(timeout=0.3)  # the frame after it is not answered


async def test_the_inbox_keeps_no_payload_of_a_refused_or_binary_frame():
    import asyncio

    from sessions_app.errors import MessageTooLarge
    from sessions_app.inbox import REFUSED, Inbox
    from sessions_app.ratelimit import TokenBucket

    arriving = [
        {"type": "websocket.connect"},
        {"type": "websocket.receive", "bytes": b"\x00" * 5000, "text": None},
        {"type": "websocket.receive", "text": "x" * 5000, "bytes": None},
        {"type": "websocket.receive", "text": "after the close", "bytes": None},
        {"type": "websocket.disconnect", "code": 1000},
    ]

    async def receive():
        return arriving.pop(0) if arriving else await asyncio.Event().wait()

    inbox = Inbox(receive, bucket=TokenBucket(rate=0, burst=1, now=0), max_bytes=1000, max_queued=4)
    events = [await inbox() for _ in range(4)]
    inbox.close()
    assert events[0] == {"type": "websocket.connect"}
    assert events[1] == {"type": "websocket.receive", "bytes": b"", "text": None}  # refused as binary later
    assert events[2]["type"] == REFUSED and isinstance(events[2]["error"], MessageTooLarge)
    assert "xxxx" not in repr(events[2])
    assert events[2]["error"].__traceback__ is None  # which would hold the payload
    assert events[3] == {"type": "websocket.disconnect", "code": 1000}  # the frame after the close dropped
