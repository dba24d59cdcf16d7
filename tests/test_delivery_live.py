"""Session events against real daphne processes: pushed through the HTTP API, replayed across drops and crashes.

Tests without the `production` mark run on both paths (the processes share the SQLite file
or PostgreSQL); those that need an event to cross processes live run on PostgreSQL + Redis.
"""

import asyncio
import json
import time

import pytest
import websockets
from asgiref.sync import sync_to_async

from sessions_app.models import LiveSession

from .polling import wait_until
from .servers import ServerProcess, post_event, post_event_sync

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True)]


async def open_resumable(url: str, workspace) -> tuple[websockets.ClientConnection, dict]:
    ws = await websockets.connect(url, open_timeout=30)
    await ws.send(json.dumps({"type": "new_session", "workspace_dir": str(workspace), "resumable": True}))
    return ws, json.loads(await asyncio.wait_for(ws.recv(), 30))


async def next_frames(ws: websockets.ClientConnection, count: int, timeout: float = 15) -> list[dict]:
    return [json.loads(await asyncio.wait_for(ws.recv(), timeout)) for _ in range(count)]


async def resume(url: str, created: dict, token: str, last_seq: int | None) -> tuple[websockets.ClientConnection, dict]:
    ws = await websockets.connect(url, open_timeout=30)
    frame = {"type": "resume_session", "session_id": created["session_id"], "resume_token": token}
    if last_seq is not None:
        frame["last_seq"] = last_seq
    await ws.send(json.dumps(frame))
    return ws, json.loads(await asyncio.wait_for(ws.recv(), 30))


async def detached(session_id: str) -> bool:
    row = await LiveSession.objects.filter(pk=session_id).afirst()
    return row is not None and row.detached_at is not None


@pytest.mark.parametrize("server_name", ["daphne", "uvicorn-fast"])
async def test_events_sent_during_a_drop_are_replayed_on_resume(servers, workspace, sender_token, server_name):
    server = servers(server=server_name)
    ws, created = await open_resumable(server.url, workspace)
    assert await post_event(server, sender_token, created["session_id"], "first") == 1
    assert [f["seq"] for f in await next_frames(ws, 1)] == [1]
    ws.transport.abort()  # a drop: no close frame
    await wait_until(lambda: detached(created["session_id"]), 10, what="the row detached")
    assert [await post_event(server, sender_token, created["session_id"], n) for n in range(2)] == [2, 3]

    again, reply = await resume(server.url, created, created["resume_token"], last_seq=1)
    assert (reply["type"], reply["replayed"], reply["missed"]) == ("session_resumed", 2, False)
    assert [(f["seq"], f["data"]) for f in await next_frames(again, 2)] == [(2, 0), (3, 1)]
    assert await post_event(server, sender_token, created["session_id"], "live") == 4
    assert [f["seq"] for f in await next_frames(again, 1)] == [4]
    await again.close()


async def test_a_window_overrun_on_a_real_server_reports_missed(servers, workspace, sender_token):
    server = servers(WSS_SESSION_EVENTS_KEPT="2")
    ws, created = await open_resumable(server.url, workspace)
    ws.transport.abort()
    await wait_until(lambda: detached(created["session_id"]), 10, what="the row detached")
    for n in range(4):
        await post_event(server, sender_token, created["session_id"], n)
    again, reply = await resume(server.url, created, created["resume_token"], last_seq=0)
    assert (reply["replayed"], reply["missed"]) == (2, True)
    assert [f["seq"] for f in await next_frames(again, 2)] == [3, 4]
    await again.close()


async def test_events_survive_sigkill_of_the_holding_process_and_replay_on_another(servers, workspace, sender_token):
    a, b = servers(), servers()
    ws, created = await open_resumable(a.url, workspace)
    for n in range(2):
        await post_event(a, sender_token, created["session_id"], n)
    assert [f["seq"] for f in await next_frames(ws, 2)] == [1, 2]
    a.stop()  # SIGKILL: the row still names a's connection until the reaper or a resume moves it
    for n in range(2, 5):
        await post_event(b, sender_token, created["session_id"], n)  # kept; the layer's copy reaches nobody
    again, reply = await resume(b.url, created, created["resume_token"], last_seq=2)
    assert (reply["type"], reply["replayed"], reply["missed"]) == ("session_resumed", 3, False)
    assert [(f["seq"], f["data"]) for f in await next_frames(again, 3)] == [(n + 1, n) for n in range(2, 5)]
    await again.close()


async def test_an_ended_session_answers_404_on_a_real_server(servers, workspace, sender_token):
    server = servers()
    ws, created = await open_resumable(server.url, workspace)
    await ws.close()  # 1000: the session ends
    await wait_until(lambda: _gone(created["session_id"]), 10, what="the session row removed after the client's close")
    status, body, _ = await asyncio.to_thread(
        post_event_sync, server, sender_token, created["session_id"], {"event": "x", "data": 1}
    )
    assert status == 404 and "No live session" in body["detail"]


async def _gone(session_id: str) -> bool:
    return not await LiveSession.objects.filter(pk=session_id).aexists()


async def test_bad_inputs_on_a_real_server_get_their_status_and_a_bad_last_seq_keeps_the_connection(
    servers, workspace, sender_token
):
    server = servers(WSS_MAX_MESSAGE_BYTES="400", WSS_SESSION_EVENT_RATE="2")
    ws, created = await open_resumable(server.url, workspace)
    session_id = created["session_id"]
    for body, expected in [
        ({"event": "Bad", "data": 1}, 400),
        ({"event": "ok"}, 400),
        ({"event": "ok", "data": "x" * 400}, 413),
        ({"event": "ok", "data": 1}, 202),
        ({"event": "ok", "data": 2}, 202),
    ]:
        status, _, _ = await asyncio.to_thread(post_event_sync, server, sender_token, session_id, body)
        assert status == expected, body
    status, _, headers = await asyncio.to_thread(
        post_event_sync, server, sender_token, session_id, {"event": "ok", "data": 3}
    )
    assert status == 429 and headers["Retry-After"] == "1"
    assert [f["seq"] for f in await next_frames(ws, 2)] == [1, 2]
    ws.transport.abort()
    await wait_until(lambda: detached(session_id), 10, what="the row detached")
    again = await websockets.connect(server.url, open_timeout=30)
    for bad in ("2", -1, 1.5, None, True):
        frame = {"type": "resume_session", "session_id": session_id, "resume_token": created["resume_token"]}
        await again.send(json.dumps({**frame, "last_seq": bad, "request_id": "r"}))
        [reply] = await next_frames(again, 1)
        assert (reply["type"], reply["code"], reply["request_id"]) == ("error", "invalid_request", "r"), bad
    await again.send(json.dumps({**frame, "last_seq": 1}))  # the connection stayed, the token is unspent
    resumed, replayed = await next_frames(again, 2)
    assert (resumed["type"], resumed["replayed"], replayed["seq"]) == ("session_resumed", 1, 2)
    await again.send(json.dumps({"type": "end_session", "request_id": 1}))
    assert json.loads(await asyncio.wait_for(again.recv(), 10))["type"] == "session_ended"
    await again.close()


# --- Across processes on PostgreSQL + Redis --------------------------------------------------------


@pytest.mark.production
@pytest.mark.usefixtures("production_services")
async def test_an_event_posted_to_process_b_reaches_the_session_on_process_a(servers, workspace, sender_token):
    a, b = servers(), servers()
    ws, created = await open_resumable(a.url, workspace)
    latencies = []
    for n in range(20):
        started = time.monotonic()
        assert await post_event(b, sender_token, created["session_id"], n) == n + 1
        [frame] = await next_frames(ws, 1)
        latencies.append(time.monotonic() - started)
        assert (frame["type"], frame["seq"], frame["data"]) == ("session_event", n + 1, n)
    latencies.sort()
    print(f"\nHTTP on B to frame on A: p50 {latencies[10] * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms")
    await ws.close()


@pytest.mark.production
@pytest.mark.usefixtures("production_services")
async def test_after_a_takeover_on_another_process_only_the_new_connection_gets_events(
    servers, workspace, sender_token
):
    a, b = servers(), servers()
    old, created = await open_resumable(a.url, workspace)
    assert await post_event(a, sender_token, created["session_id"], "before") == 1
    assert [f["seq"] for f in await next_frames(old, 1)] == [1]
    new, reply = await resume(b.url, created, created["resume_token"], last_seq=1)
    assert (reply["replayed"], reply["missed"]) == (0, False)
    for n in range(3):
        await post_event(a, sender_token, created["session_id"], n)
    assert [f["seq"] for f in await next_frames(new, 3)] == [2, 3, 4]
    rest = []
    with pytest.raises(websockets.ConnectionClosed):
        while True:
            rest.append(json.loads(await asyncio.wait_for(old.recv(), 15)))
    assert [f.get("code") for f in rest] == ["session_taken_over"] and old.close_code == 4409
    await new.close()


@pytest.mark.production
@pytest.mark.usefixtures("production_services")
async def test_events_pushed_while_the_session_moves_between_processes_are_neither_lost_nor_doubled(
    servers, workspace, sender_token
):
    """Four producers post without pause, two to each process, while the client drops and resumes on each in turn."""
    a, b = servers(WSS_SESSION_EVENT_RATE="0"), servers(WSS_SESSION_EVENT_RATE="0")
    ws, created = await open_resumable(a.url, workspace)
    session_id, resume_token = created["session_id"], created["resume_token"]
    stop = asyncio.Event()
    sent: list[int] = []

    async def producer(server: ServerProcess) -> None:
        while not stop.is_set():
            sent.append(await post_event(server, sender_token, session_id, len(sent)))

    producers = [asyncio.ensure_future(producer(server)) for server in (a, b, a, b)]
    seen: list[int] = []

    async def read_until(count: int) -> None:
        while len(seen) < count:
            [frame] = await next_frames(ws, 1)
            assert frame["type"] == "session_event", frame
            seen.append(frame["seq"])

    for round_ in range(6):
        await read_until(len(seen) + 3)
        ws.transport.abort()
        ws, reply = await resume((b, a)[round_ % 2].url, created, resume_token, last_seq=seen[-1])
        assert reply["type"] == "session_resumed" and not reply["missed"], reply
        resume_token = reply["resume_token"]
    stop.set()
    await asyncio.gather(*producers)
    await read_until(len(sent))
    assert seen == list(range(1, len(sent) + 1))
    assert sorted(sent) == seen
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(ws.recv(), 0.5)  # nothing doubled after the last one
    print(f"\n{len(sent)} events across 6 resumes on alternating processes, none lost or doubled")
    await ws.close()
    rows = await sync_to_async(list)(LiveSession.objects.filter(pk=session_id).values_list("last_seq", flat=True))
    assert rows in ([], [len(sent)])
