"""What only a real server shows: close codes on the wire, the size cut-off, TCP drops.

Each test runs under both production servers: daphne and the fast command (uvicorn with
its `websockets` implementation, httptools, uvloop: README).
"""

import asyncio
import json
import signal
import time

import psutil
import pytest
import websockets

from sessions_app.models import LiveSession, ServerInstance

from .communicators import frames_until_closed, new_session_frame, ws_open_session
from .polling import SLACK, wait_until

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True)]


@pytest.fixture(params=["daphne", "uvicorn-fast"])
def daphne_server(request, server_factory):
    """A real server process: daphne, then the fast production command (the name is the suite's)."""
    return server_factory(server=request.param)


async def registry_empty() -> bool:
    return not await LiveSession.objects.aexists()


async def test_session_opens_and_its_row_goes_with_a_clean_close(daphne_server, workspace):
    async with websockets.connect(daphne_server.url) as ws:
        await ws.send(new_session_frame(workspace, request_id="a"))
        reply = json.loads(await ws.recv())
        assert reply["type"] == "new_session"
        assert reply["request_id"] == "a"
        assert await LiveSession.objects.filter(pk=reply["session_id"]).aexists()
    await wait_until(registry_empty, 10, what="the row removed")


@pytest.mark.parametrize(
    ("frame", "code", "close_code"),
    [
        ("{not json", "invalid_json", 4400),
        (new_session_frame("/tmp", pad="x" * 100 * 1024), "message_too_large", 4413),
        (b"\x00\x01", "unsupported_frame", 4415),
    ],
    ids=["bad-json", "100-kib-frame", "binary-frame"],
)
async def test_a_fatal_frame_gets_its_error_frame_then_its_close_code(daphne_server, frame, code, close_code):
    async with websockets.connect(daphne_server.url) as ws:
        await ws.send(frame)
        frames, received = await frames_until_closed(ws, 10)
    assert [(f["type"], f["code"]) for f in frames] == [("error", code)]
    assert received == close_code


async def test_abrupt_tcp_drop_removes_the_row(daphne_server, workspace):
    ws = await websockets.connect(daphne_server.url)
    session_id = await ws_open_session(ws, workspace)
    assert await LiveSession.objects.filter(pk=session_id).aexists()
    ws.transport.abort()  # a TCP reset: no close frame
    await wait_until(registry_empty, 10, what="the row removed")


async def test_bad_clients_do_not_disturb_a_good_session(daphne_server, workspace):
    async with websockets.connect(daphne_server.url) as good:
        session_id = await ws_open_session(good, workspace)
        for frame in ["nope", b"\x00", "[]", '{"type": 1}']:
            async with websockets.connect(daphne_server.url) as bad:
                await bad.send(frame)
                assert json.loads(await bad.recv())["type"] == "error"
        assert await LiveSession.objects.filter(pk=session_id).aexists()
        daphne_server.assert_no_traceback()


async def test_the_server_registers_its_instance_at_start_and_retires_it_on_sigterm(daphne_server, workspace):
    async def registered() -> bool:
        return await ServerInstance.objects.filter(pid=daphne_server.serving_pid).aexists()

    await wait_until(registered, 10, what="the instance registered by the start hook, before any session")
    async with websockets.connect(daphne_server.url) as ws:
        await ws_open_session(ws, workspace)
        daphne_server.signal(signal.SIGTERM)
        assert json.loads(await asyncio.wait_for(ws.recv(), 10))["code"] == "server_shutting_down"
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 10)
    assert closed.value.rcvd.code == 4503
    # daphne exits 0; uvicorn re-raises the signal once its shutdown is done.
    assert await asyncio.to_thread(daphne_server.wait, 20) in {0, -signal.SIGTERM}
    assert not await ServerInstance.objects.aexists()
    assert not await LiveSession.objects.aexists()


async def test_a_client_offering_compression_gets_none(daphne_server, workspace):
    """Compression would keep ~100 kB of zlib state per session resident (docs/performance.md)."""
    async with websockets.connect(daphne_server.url, compression="deflate") as ws:
        assert "Sec-WebSocket-Extensions" in ws.request.headers
        assert "Sec-WebSocket-Extensions" not in ws.response.headers
        await ws_open_session(ws, workspace)


async def test_a_10_mib_frame_is_refused_with_1009_before_the_fast_server_reads_it(server_factory, workspace):
    server = server_factory(server="uvicorn-fast")
    async with websockets.connect(server.url) as warm:  # the first session sets up the registry and layer clients
        await warm.send(new_session_frame(workspace))
        assert json.loads(await warm.recv())["type"] == "new_session"
    await asyncio.sleep(0.2)
    worker = psutil.Process(server.serving_pid)
    before = worker.memory_info().rss
    peak = before

    async def sample() -> None:
        nonlocal peak
        while True:
            peak = max(peak, worker.memory_info().rss)
            await asyncio.sleep(0.002)

    sampler = asyncio.create_task(sample())
    started = time.monotonic()
    async with websockets.connect(server.url, max_size=None) as ws:
        with pytest.raises(websockets.ConnectionClosed) as closed:
            # The 1009 comes from the frame's header: it can cut the send short.
            await ws.send(new_session_frame("/", pad="x" * 10 * 1024 * 1024))
            await ws.recv()  # no message_too_large reply: the frame never reached the application
    await asyncio.sleep(0.2)
    sampler.cancel()
    assert closed.value.rcvd.code == 1009
    assert time.monotonic() - started < 10 + SLACK
    # Buffering the frame would take 10 MiB at least (the decoded text, twice that): refused unread.
    assert peak - before < 4 * 1024 * 1024, f"server RSS grew by {(peak - before) / 2**20:.1f} MiB"


async def test_a_session_closed_by_the_server_for_bad_input_leaves_no_row(daphne_server, workspace):
    async with websockets.connect(daphne_server.url) as ws:
        await ws.send(new_session_frame(workspace))
        session_id = json.loads(await ws.recv())["session_id"]
        await ws.send("{not json")
        assert json.loads(await ws.recv())["code"] == "invalid_json"
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd.code == 4400
    # The server closed it: the consumer must still hear the disconnect and remove the row.
    await wait_until(registry_empty, 10, what=f"row {session_id} removed")


async def test_after_the_server_closed_a_connection_sigterm_still_stops_the_process(daphne_server):
    async with websockets.connect(daphne_server.url) as ws:
        await ws.send("{not json")
        assert json.loads(await ws.recv())["code"] == "invalid_json"
        with pytest.raises(websockets.ConnectionClosed):
            await ws.recv()
    await asyncio.sleep(0.5)
    daphne_server.signal(signal.SIGTERM)
    # A consumer left waiting for a disconnect the server never delivers would hold the stop forever.
    exit_code = await asyncio.to_thread(daphne_server.wait, 20)
    assert exit_code in {0, -signal.SIGTERM}
