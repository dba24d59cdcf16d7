"""Resume against real daphne processes: drops, SIGTERM, SIGKILL, take-over, expiry, rolling restart.

Tests without the `production` mark run on both paths (two daphnes share the SQLite file or
PostgreSQL); those that need a message to cross processes (take-over) or many clients at
once run on PostgreSQL + Redis.
"""

import asyncio
import json
import signal
import time
import uuid

import pytest
import websockets
from asgiref.sync import sync_to_async

from sessions_app import errors
from sessions_app.client import SessionClient, connect
from sessions_app.models import LiveSession, ServerInstance

from .communicators import new_session_frame
from .polling import SLACK, wait_until, wait_until_sync
from .servers import FAST_HEARTBEAT as HEARTBEAT
from .servers import FAST_TIMEOUT as TIMEOUT
from .servers import STOP_SECONDS, ServerProcess, instance_of, run_cli

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True)]

CLIENTS = 20


@sync_to_async
def rows() -> list[LiveSession]:
    return list(LiveSession.objects.all())


async def holder(url: str, workspace, *, fallback: list[str]) -> tuple[SessionClient, asyncio.Task]:
    """A client holding a resumable session with hold(), which resumes it on its own."""
    client = await connect(url, fallback_urls=fallback, open_timeout=30)
    await client.new_session(str(workspace), resumable=True, timeout=30)
    return client, asyncio.ensure_future(client.hold())


async def holders(url: str, workspace, count: int, *, fallback: list[str]) -> list[tuple[SessionClient, asyncio.Task]]:
    return list(await asyncio.gather(*(holder(url, workspace, fallback=fallback) for _ in range(count))))


async def all_on(held, server: ServerProcess, timeout: float) -> float:
    """Wait until every held session's row is attached to `server`'s instance; the seconds it took."""
    instance = await instance_of(server)
    ids = {client.session.session_id for client, _ in held}

    async def attached() -> bool:
        found = await rows()
        mine = {row.id for row in found if row.instance_id == instance.pk and row.detached_at is None}
        return ids <= mine

    return await wait_until(attached, timeout, what=f"all {len(ids)} sessions attached to {server.port}")


async def release(held) -> None:
    for _, task in held:
        task.cancel()
    await asyncio.gather(*(client.close() for client, _ in held), return_exceptions=True)


def alive(held) -> None:
    """No holder gave up: hold() raises only when its session is really gone."""
    for _, task in held:
        if task.done():
            raise AssertionError(f"a holder ended: {task.exception()!r}")


async def test_a_dropped_tcp_connection_detaches_and_the_session_resumes_on_the_same_server(servers, workspace):
    server = servers()
    ws = await websockets.connect(server.url)
    await ws.send(new_session_frame(workspace, resumable=True))
    created = json.loads(await ws.recv())
    ws.transport.abort()  # no close frame: the server sees 1006

    async def detached() -> bool:
        row = await LiveSession.objects.filter(pk=created["session_id"]).afirst()
        return row is not None and row.detached_at is not None

    await wait_until(detached, 10, what="the row detached")
    async with connect(server.url) as client:
        session = await client.resume_session(created["session_id"], created["resume_token"])
        assert str(session.session_id) == created["session_id"] and session.resume_token != created["resume_token"]
    # client.close() sent 1000: the session ended.
    await wait_until(
        lambda: _not(LiveSession.objects.filter(pk=created["session_id"]).aexists()), 10, what="ended by 1000"
    )


async def _not(awaitable) -> bool:
    return not await awaitable


async def test_a_detached_session_expires_within_grace_plus_one_heartbeat(servers, workspace):
    grace = 2
    server = servers(WSS_RESUME_GRACE_SECONDS=str(grace))
    ws = await websockets.connect(server.url)
    await ws.send(new_session_frame(workspace, resumable=True))
    created = json.loads(await ws.recv())
    assert created["resume_grace_seconds"] == grace
    ws.transport.abort()
    await wait_until(
        lambda: LiveSession.objects.filter(pk=created["session_id"], detached_at__isnull=False).aexists(), 10
    )
    detached_at = time.monotonic()
    took = await wait_until(
        lambda: _not(LiveSession.objects.filter(pk=created["session_id"]).aexists()),
        grace + HEARTBEAT + SLACK,
        what="expiry",
    )
    print(f"\nexpired {took:.2f} s after the detach was seen (bound {grace + HEARTBEAT} s)")
    assert time.monotonic() - detached_at >= grace - 0.5  # not before the grace (minus the poll's lag)
    # Event lines are written by the log writer thread, a moment after the fact.
    await wait_until(lambda: "sessions_expired count=1" in server.log(), 5, what="the expiry log line")
    async with connect(server.url) as client:
        with pytest.raises(errors.SessionNotFound):
            await client.resume_session(created["session_id"], created["resume_token"])


@pytest.mark.parametrize("server", ["daphne", "uvicorn-fast"])
async def test_sigterm_detaches_and_the_client_resumes_on_the_other_process(servers, workspace, server):
    a, b = servers(server=server), servers()
    [(client, _)] = held = await holders(a.url, workspace, 1, fallback=[b.url])
    created_at = client.session.created_at
    a.signal(signal.SIGTERM)
    # uvicorn sends 1012 itself and re-raises the signal once stopped, so it dies of it.
    assert await asyncio.to_thread(a.wait, STOP_SECONDS[server] + SLACK) in {0, -signal.SIGTERM}
    await all_on(held, b, 15)
    alive(held)
    assert client.resumes == 1 and client.session.created_at == created_at
    a.assert_no_traceback()
    await release(held)


async def test_sigkill_the_session_resumes_at_once_on_a_live_process_and_the_reaper_leaves_it(servers, workspace):
    a, b = servers(), servers()
    held = await holders(a.url, workspace, 1, fallback=[b.url])
    dead = await instance_of(a)
    a.stop()  # SIGKILL
    took = await all_on(held, b, TIMEOUT)
    print(f"\nSIGKILL: resumed on the live process {took:.2f} s later (the reaper needs {TIMEOUT} s)")
    await wait_until(lambda: _not(ServerInstance.objects.filter(pk=dead.pk).aexists()), TIMEOUT + HEARTBEAT + SLACK)
    await all_on(held, b, 0)
    alive(held)
    await release(held)


async def test_the_reaper_detaches_a_dead_instances_resumable_sessions_for_a_later_resume(servers, workspace):
    a, b = servers(), servers()
    ws = await websockets.connect(a.url)
    await ws.send(new_session_frame(workspace, resumable=True))
    created = json.loads(await ws.recv())
    await ws.send(new_session_frame(workspace))  # session_exists
    await ws.recv()
    plain = await websockets.connect(a.url)
    await plain.send(new_session_frame(workspace))
    plain_created = json.loads(await plain.recv())
    dead = await instance_of(a)
    a.stop()
    await wait_until(lambda: _not(ServerInstance.objects.filter(pk=dead.pk).aexists()), TIMEOUT + HEARTBEAT + SLACK)
    row = await LiveSession.objects.aget(pk=created["session_id"])
    assert row.detached_at is not None and row.instance_id is None
    assert not await LiveSession.objects.filter(pk=plain_created["session_id"]).aexists()
    async with connect(b.url) as client:
        await client.resume_session(created["session_id"], created["resume_token"])
        assert (await LiveSession.objects.aget(pk=created["session_id"])).instance_id == (await instance_of(b)).pk


def test_the_cli_holds_a_resumable_session_across_a_server_restart(servers, workspace):
    a = servers()
    port = a.port
    cli = run_cli(a.url, str(workspace), "--resumable")
    try:
        printed = json.loads(cli.stdout.readline())
        assert printed["resume_grace_seconds"] == 30 and "resume_token" not in printed
        a.signal(signal.SIGTERM)
        assert a.wait(STOP_SECONDS["daphne"] + SLACK) == 0
        restarted = servers(port=port)  # the same address, a new process
        wait_until_sync(
            lambda: LiveSession.objects.filter(
                pk=printed["session_id"], instance__pid=restarted.serving_pid, detached_at__isnull=True
            ).exists(),
            20,
            what="the CLI's session resumed on the restarted server",
        )
        assert cli.poll() is None
        cli.send_signal(signal.SIGINT)
        assert cli.wait(timeout=20) == 0
    finally:
        cli.kill()
    wait_until_sync(lambda: not LiveSession.objects.filter(pk=printed["session_id"]).exists(), 10, what="ended")


# --- Across processes on PostgreSQL + Redis ------------------------------------------------


@pytest.mark.production
@pytest.mark.usefixtures("production_services")
async def test_resume_on_another_process_while_attached_takes_over_with_4409(servers, workspace):
    a, b = servers(), servers()
    old = await websockets.connect(a.url)
    await old.send(new_session_frame(workspace, resumable=True))
    created = json.loads(await old.recv())
    async with connect(b.url) as client:
        await client.resume_session(created["session_id"], created["resume_token"])
        frame = json.loads(await asyncio.wait_for(old.recv(), 10))
        assert (frame["type"], frame["code"]) == ("error", "session_taken_over")
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(old.recv(), 10)
        assert closed.value.rcvd.code == 4409
        await asyncio.sleep(0.5)  # the old consumer's end has run: it must not have touched the row
        row = await LiveSession.objects.aget(pk=created["session_id"])
        assert row.detached_at is None and row.instance_id == (await instance_of(b)).pk
        assert "session_taken_over" in a.log()
        a.assert_no_traceback()


async def raw_sessions(url: str, workspace, count: int) -> list[tuple[websockets.ClientConnection, dict]]:
    """`count` resumable sessions on plain connections that resume nothing by themselves."""

    async def one() -> tuple[websockets.ClientConnection, dict]:
        ws = await websockets.connect(url, open_timeout=30)
        await ws.send(new_session_frame(workspace, resumable=True))
        return ws, json.loads(await asyncio.wait_for(ws.recv(), 30))

    return list(await asyncio.gather(*(one() for _ in range(count))))


@pytest.mark.production
@pytest.mark.usefixtures("production_services")
async def test_sigterm_with_20_resumable_sessions_all_resume_on_the_other_process(servers, workspace):
    """Clients that hold on (hold() resumes at once) and clients that come back after the process exited."""
    a, b = servers(), servers()
    held = await holders(a.url, workspace, CLIENTS // 2, fallback=[b.url])
    late = await raw_sessions(a.url, workspace, CLIENTS // 2)
    ids = {client.session.session_id for client, _ in held} | {uuid.UUID(reply["session_id"]) for _, reply in late}
    instance_a = await instance_of(a)
    started = time.monotonic()
    a.signal(signal.SIGTERM)
    took = await all_on(held, b, 30)
    print(f"\nSIGTERM: {CLIENTS // 2} holding clients resumed on the other process in {took:.2f} s")
    assert await asyncio.to_thread(a.wait, 30) == 0
    print(f"process exited {time.monotonic() - started:.2f} s after SIGTERM")
    # The stopped process detached the sessions nobody had resumed yet; none was deleted.
    found = {row.id: row for row in await rows()}
    assert set(found) == ids
    assert not await ServerInstance.objects.filter(pk=instance_a.pk).aexists()
    for _, reply in late:
        assert found[uuid.UUID(reply["session_id"])].detached_at is not None
    for _, reply in late:
        async with connect(b.url) as client:
            session = await client.resume_session(reply["session_id"], reply["resume_token"])
            assert session.created_at.isoformat(timespec="milliseconds").replace("+00:00", "Z") == reply["created_at"]
            client.websocket.transport.abort()  # a drop: stays detached for the next check
    alive(held)
    assert {row.id for row in await rows()} == ids
    assert all(client.resumes == 1 for client, _ in held)
    await release(held)


@pytest.mark.production
@pytest.mark.usefixtures("production_services")
async def test_sigkill_with_20_resumable_sessions_all_resume_at_once_and_rows_are_exact_after_the_reap(
    servers, workspace
):
    a, b = servers(), servers()
    held = await holders(a.url, workspace, CLIENTS, fallback=[b.url])
    ids = {client.session.session_id for client, _ in held}
    dead = await instance_of(a)
    a.stop()  # SIGKILL
    took = await all_on(held, b, TIMEOUT)
    print(f"\nSIGKILL: {CLIENTS} sessions resumed on the live process in {took:.2f} s (reaper: {TIMEOUT} s)")
    await wait_until(lambda: _not(ServerInstance.objects.filter(pk=dead.pk).aexists()), TIMEOUT + HEARTBEAT + SLACK)
    instance_b = await instance_of(b)
    found = await rows()
    assert {row.id for row in found} == ids
    assert all(row.instance_id == instance_b.pk and row.detached_at is None for row in found)
    alive(held)
    await release(held)


@pytest.mark.production
@pytest.mark.usefixtures("production_services")
async def test_a_rolling_restart_of_two_processes_under_20_resumable_clients_loses_none(servers, workspace):
    a, b = servers(), servers()
    held = await holders(a.url, workspace, CLIENTS // 2, fallback=[b.url])
    held += await holders(b.url, workspace, CLIENTS // 2, fallback=[a.url])
    ids = {client.session.session_id for client, _ in held}
    created = {client.session.session_id: client.session.created_at for client, _ in held}

    a.signal(signal.SIGTERM)  # step 1: stop A; its clients resume on B
    assert await asyncio.to_thread(a.wait, 30) == 0
    await all_on(held, b, 30)
    a = servers(port=a.port)  # step 2: A comes back on its address
    b.signal(signal.SIGTERM)  # step 3: stop B; every client resumes on the new A
    assert await asyncio.to_thread(b.wait, 30) == 0
    await all_on(held, a, 30)
    b = servers(port=b.port)  # step 4: B comes back

    alive(held)
    found = await rows()
    assert {row.id for row in found} == ids and len(found) == CLIENTS
    assert {client.session.session_id: client.session.created_at for client, _ in held} == created
    print(f"\nrolling restart: {CLIENTS} sessions kept, {sum(c.resumes for c, _ in held)} resumes")
    await release(held)
