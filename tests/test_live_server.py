"""What only a real daphne shows: close codes on the wire, the size cut-off, TCP drops."""

import asyncio
import json
import signal

import pytest
import websockets

from sessions_app.models import LiveSession, ServerInstance

from .communicators import ws_open_session
from .polling import wait_until

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True)]


async def registry_empty() -> bool:
    return not await LiveSession.objects.aexists()


async def test_session_opens_and_its_row_goes_with_a_clean_close(daphne_server, workspace):
    async with websockets.connect(daphne_server.url) as ws:
        await ws.send(json.dumps({"type": "new_session", "workspace_dir": str(workspace), "request_id": "a"}))
        reply = json.loads(await ws.recv())
        assert reply["type"] == "new_session"
        assert reply["request_id"] == "a"
        assert await LiveSession.objects.filter(pk=reply["session_id"]).aexists()
    await wait_until(registry_empty, 10, what="the row removed")


async def test_bad_json_gets_the_error_frame_then_close_4400(daphne_server):
    async with websockets.connect(daphne_server.url) as ws:
        await ws.send("{not json")
        assert json.loads(await ws.recv())["code"] == "invalid_json"
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd.code == 4400


async def test_100_kib_frame_gets_message_too_large_then_4413(daphne_server, workspace):
    async with websockets.connect(daphne_server.url) as ws:
        await ws.send(json.dumps({"type": "new_session", "workspace_dir": str(workspace), "pad": "x" * 100 * 1024}))
        assert json.loads(await ws.recv())["code"] == "message_too_large"
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd.code == 4413


async def test_binary_frame_gets_unsupported_frame_then_4415(daphne_server):
    async with websockets.connect(daphne_server.url) as ws:
        await ws.send(b"\x00\x01")
        assert json.loads(await ws.recv())["code"] == "unsupported_frame"
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd.code == 4415


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
        assert "Traceback" not in daphne_server.log()


async def test_daphne_registers_its_instance_at_start_and_retires_it_on_sigterm(daphne_server, workspace):
    async def registered() -> bool:
        return await ServerInstance.objects.filter(pid=daphne_server.process.pid).aexists()

    await wait_until(registered, 10, what="the instance registered by the start hook, before any session")
    async with websockets.connect(daphne_server.url) as ws:
        await ws_open_session(ws, workspace)
        daphne_server.signal(signal.SIGTERM)
        assert json.loads(await asyncio.wait_for(ws.recv(), 10))["code"] == "server_shutting_down"
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 10)
    assert closed.value.rcvd.code == 4503
    assert await asyncio.to_thread(daphne_server.wait, 20) == 0
    assert not await ServerInstance.objects.aexists()
    assert not await LiveSession.objects.aexists()
