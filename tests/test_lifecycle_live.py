"""A real daphne against a registry that is busy or stops answering: heartbeat, stop, connect timeout.

PostgreSQL runs behind `tests/proxy.py`'s TcpProxy, which can stall (links held open,
nothing forwarded): the database "accepts and then says nothing". Everything is observed
from outside the process (frames, exit, rows, log), so these tests hold whatever the
lifecycle's insides look like.
"""

import asyncio
import json
import signal
import time
from datetime import datetime

import pytest
import websockets

from sessions_app.models import ServerInstance

from .communicators import new_session_frame, ws_open_session
from .locks import sessions_table_locked
from .polling import SLACK, wait_until
from .proxy import TcpProxy
from .servers import ServerProcess, database_url_via

pytestmark = [pytest.mark.production, pytest.mark.live, pytest.mark.django_db(transaction=True)]

HEARTBEAT = 1
STOP_TIMEOUT = 3  # WSS_STOP_TIMEOUT_SECONDS for the server under test (15 s by default)
CLOSE_HANDSHAKES = 2  # the stop then gives the clients' close handshakes up to 2 s
CONNECT_TIMEOUT = 2  # DATABASE_CONNECT_TIMEOUT for the servers under test


@pytest.fixture
def registry_proxy(database_proxy) -> TcpProxy:
    """A TcpProxy in front of the test's PostgreSQL."""
    return database_proxy


def proxied_server(server_factory, proxy: TcpProxy, **env: str) -> ServerProcess:
    """A daphne whose registry connections all run through `proxy`."""
    return server_factory(env={"DATABASE_URL": database_url_via(proxy), "WSS_HEARTBEAT_SECONDS": str(HEARTBEAT), **env})


async def heartbeat_of(server: ServerProcess) -> datetime | None:
    row = await ServerInstance.objects.filter(pid=server.serving_pid).afirst()
    return row.heartbeat_at if row else None


async def test_the_heartbeat_goes_on_while_session_writes_wait(production_services, server_factory, workspace):
    server = server_factory(env={"WSS_HEARTBEAT_SECONDS": str(HEARTBEAT)})
    async with websockets.connect(server.url) as first:
        await ws_open_session(first, workspace)  # the instance is registered
        async with websockets.connect(server.url) as waiting:
            # Another transaction takes the session table: every session write now waits.
            with sessions_table_locked():
                await waiting.send(new_session_frame(workspace))
                before = await heartbeat_of(server)

                async def beat_advanced() -> bool:
                    return (await heartbeat_of(server)) > before

                await wait_until(beat_advanced, HEARTBEAT * 3 + SLACK, what="a heartbeat while session writes wait")
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(waiting.recv(), 0.1)  # the write is still held
            reply = json.loads(await asyncio.wait_for(waiting.recv(), 10))
            assert reply["type"] == "new_session"


async def test_a_stop_gives_up_on_a_registry_that_does_not_answer(server_factory, registry_proxy, workspace):
    server = proxied_server(
        server_factory,
        registry_proxy,
        WSS_STOP_TIMEOUT_SECONDS=str(STOP_TIMEOUT),
        DATABASE_CONNECT_TIMEOUT=str(CONNECT_TIMEOUT),
    )
    async with websockets.connect(server.url) as ws:
        await ws_open_session(ws, workspace)
        registry_proxy.stall()
        started = time.monotonic()
        server.signal(signal.SIGTERM)
        # The clients are told at once, before the stop waits on the registry.
        frame = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert frame["code"] == "server_shutting_down"
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
        assert closed.value.rcvd.code == 4503
    # After giving up: the close handshakes, and a last connect attempt of the lifecycle thread.
    bound = STOP_TIMEOUT + CLOSE_HANDSHAKES + CONNECT_TIMEOUT + SLACK
    exit_code = await asyncio.to_thread(server.wait, bound)
    took = time.monotonic() - started
    print(f"\nstop against a stalled registry: exited {exit_code} after {took:.1f} s (bound {bound} s)")
    assert STOP_TIMEOUT - 0.5 <= took <= bound
    assert f"the registry did not answer within {STOP_TIMEOUT} s; peers will reap this instance" in server.log()


async def test_a_registry_that_accepts_and_says_nothing_is_unavailable_after_the_connect_timeout(
    server_factory, registry_proxy, workspace
):
    server = proxied_server(server_factory, registry_proxy, DATABASE_CONNECT_TIMEOUT=str(CONNECT_TIMEOUT))
    async with websockets.connect(server.url) as ws:
        registry_proxy.stall()  # before the session's first write: it must open a connection
        started = time.monotonic()
        await ws.send(new_session_frame(workspace, request_id=1))
        reply = json.loads(await asyncio.wait_for(ws.recv(), CONNECT_TIMEOUT * 3 + SLACK))
        took = time.monotonic() - started
        print(f"\nnew_session against a stalled registry answered {reply['code']} after {took:.1f} s")
        assert (reply["code"], reply["request_id"]) == ("unavailable", 1)
        # The writer tries the batch, then the row alone: at most two connect timeouts.
        assert CONNECT_TIMEOUT - 0.5 <= took <= 2 * CONNECT_TIMEOUT + SLACK
        registry_proxy.restore()
        # Whether or not the start's registration got through before the stall (failed, it
        # left the lease lapsed), the same connection works again at once.
        assert await ws_open_session(ws, workspace, timeout=1 + SLACK)


async def test_after_a_stall_longer_than_the_lease_the_next_new_session_is_accepted_at_once(
    server_factory, registry_proxy, workspace
):
    # Heartbeats 4 s apart, each given up after 1 s: at the restore, the next one is seconds away.
    heartbeat, lease = 4, 4  # lease: the instance timeout (8 s) minus one heartbeat
    server = proxied_server(
        server_factory,
        registry_proxy,
        WSS_HEARTBEAT_SECONDS=str(heartbeat),
        WSS_INSTANCE_TIMEOUT_SECONDS=str(heartbeat + lease),
        WSS_REGISTRY_TIMEOUT_SECONDS="1",
        DATABASE_CONNECT_TIMEOUT=str(CONNECT_TIMEOUT),
    )
    await wait_until(lambda: " started; heartbeat every" in server.log(), 10 + SLACK, what="the instance registered")
    async with websockets.connect(server.url) as held, websockets.connect(server.url) as same:
        await ws_open_session(held, workspace)
        registry_proxy.stall()
        # The lease runs out: the held session is closed before a peer could reap it.
        frame = json.loads(await asyncio.wait_for(held.recv(), lease + heartbeat + SLACK))
        assert frame["code"] == "session_lost"
        failed = server.log().count("heartbeat failed")
        await wait_until(
            lambda: server.log().count("heartbeat failed") > failed, heartbeat + 1 + SLACK, what="a heartbeat failing"
        )
        await same.send(new_session_frame(workspace, request_id=1))
        reply = json.loads(await asyncio.wait_for(same.recv(), 2 + SLACK))
        assert (reply["code"], reply["request_id"]) == ("unavailable", 1)  # still stalled: refused
        registry_proxy.restore()
        restored = time.monotonic()
        await ws_open_session(same, workspace, timeout=1 + SLACK)
        on_same = time.monotonic() - restored
        async with websockets.connect(server.url) as new:
            started = time.monotonic()
            await ws_open_session(new, workspace, timeout=1 + SLACK)
            on_new = time.monotonic() - started
    print(f"\nafter the restore: accepted on the same connection in {on_same:.2f} s, on a new one in {on_new:.2f} s")
    assert on_same < 1 and on_new < 1
    server.assert_no_traceback()
