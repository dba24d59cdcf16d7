"""The process lifecycle: start registers and reaps, stop closes every connection with 4503 and retires."""

import asyncio
import os
import subprocess
import sys
import uuid
import weakref
from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.db import DatabaseError
from django.utils import timezone

from sessions_app import lifecycle, services
from sessions_app.models import LiveSession, ServerInstance
from wssproject.asgi import application

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
async def fresh_process(monkeypatch):
    """A process that has neither started nor stopped; whatever a test starts is stopped after it."""
    monkeypatch.setattr(services, "_instance_registered", False)
    monkeypatch.setattr(services, "_instance_retired", False)
    monkeypatch.setattr(services, "_instance_recreated_at", None)
    monkeypatch.setattr(lifecycle, "_recreation_seen", None)
    monkeypatch.setattr(
        services, "_identity", services.ProcessIdentity(boot_id=uuid.uuid4(), host="this-host", pid=os.getpid())
    )
    monkeypatch.setattr(lifecycle, "_connections", weakref.WeakSet())
    monkeypatch.setattr(lifecycle, "_stopping", False)
    monkeypatch.setattr(lifecycle, "_predecessors_reaped", False)
    monkeypatch.setattr(lifecycle, "_heartbeat", None)
    monkeypatch.setattr(lifecycle, "CLOSE_HANDSHAKE_SECONDS", 0.2)
    yield
    if lifecycle._heartbeat is not None:
        lifecycle._heartbeat.cancel()
    await lifecycle.executor_close()


async def connect() -> WebsocketCommunicator:
    comm = WebsocketCommunicator(application, "/ws")
    assert (await comm.connect())[0]
    return comm


async def open_session(workspace) -> tuple[WebsocketCommunicator, str]:
    comm = await connect()
    await comm.send_json_to({"type": "new_session", "workspace_dir": str(workspace)})
    return comm, (await comm.receive_json_from(timeout=5))["session_id"]


async def wait_until(predicate, timeout: float = 10) -> bool:
    """Poll an async predicate until it holds or the deadline passes."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def test_stop_tells_every_connection_server_shutting_down_then_closes_4503(workspace):
    with_session, _ = await open_session(workspace)
    without_session = await connect()
    await lifecycle.stop()
    for comm in (with_session, without_session):
        reply = await comm.receive_json_from(timeout=5)
        assert (reply["type"], reply["code"]) == ("error", "server_shutting_down")
        assert await comm.receive_output(timeout=5) == {"type": "websocket.close", "code": 4503}
        await comm.disconnect(code=4503)


async def test_stop_removes_this_instance_and_every_session_of_it(workspace):
    other = await ServerInstance.objects.acreate(host="elsewhere", pid=1)
    comms = [(await open_session(workspace))[0] for _ in range(3)]
    assert await LiveSession.objects.acount() == 3
    assert await lifecycle.stop() == 3
    assert await LiveSession.objects.acount() == 0
    assert [pk async for pk in ServerInstance.objects.values_list("pk", flat=True)] == [other.pk]
    for comm in comms:
        await comm.disconnect()


async def test_a_second_stop_does_nothing(workspace):
    comm, _ = await open_session(workspace)
    assert await lifecycle.stop() == 1
    assert await lifecycle.stop() == 0
    await comm.disconnect()


async def test_a_stopping_process_refuses_new_connections():
    await lifecycle.stop()
    comm = WebsocketCommunicator(application, "/ws")
    connected, _ = await comm.connect()
    assert not connected


async def test_start_registers_this_instance_and_reaps_dead_predecessors_at_once():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    predecessor = await ServerInstance.objects.acreate(host="this-host", pid=child.pid)
    await LiveSession.objects.acreate(workspace_dir="/tmp", channel_name="ghost", instance=predecessor)
    await lifecycle.start()
    assert await ServerInstance.objects.filter(pk=services.process_identity().boot_id).aexists()
    assert not await ServerInstance.objects.filter(pk=predecessor.pk).aexists()
    assert await LiveSession.objects.acount() == 0


async def test_a_registry_down_at_start_does_not_stop_it_and_the_heartbeat_catches_up(monkeypatch, settings):
    settings.WSS_HEARTBEAT_SECONDS = 0.05
    predecessor = await ServerInstance.objects.acreate(host="this-host", pid=os.getpid())
    register = services.instance_register_sync

    def registry_down():
        raise DatabaseError("connection refused")

    monkeypatch.setattr(services, "instance_register_sync", registry_down)
    await lifecycle.start()
    assert await ServerInstance.objects.filter(pk=predecessor.pk).aexists()
    monkeypatch.setattr(services, "instance_register_sync", register)  # the registry is back

    async def caught_up() -> bool:
        return [pk async for pk in ServerInstance.objects.values_list("pk", flat=True)] == [
            services.process_identity().boot_id
        ]

    assert await wait_until(caught_up)


async def test_the_heartbeat_reaps_a_silent_peer(settings):
    settings.WSS_HEARTBEAT_SECONDS = 0.05
    settings.WSS_INSTANCE_TIMEOUT_SECONDS = 5
    silent = await ServerInstance.objects.acreate(
        host="elsewhere", pid=1, heartbeat_at=timezone.now() - timedelta(minutes=1)
    )
    await lifecycle.start()

    async def reaped() -> bool:
        return not await ServerInstance.objects.filter(pk=silent.pk).aexists()

    assert await wait_until(reaped)


async def test_sessions_whose_rows_were_reaped_while_alive_are_closed_with_session_lost(workspace):
    lost, _ = await open_session(workspace)
    await ServerInstance.objects.all().adelete()  # a peer presumed this process dead
    assert await sync_to_async(services.instance_heartbeat_sync)() is False
    kept, kept_id = await open_session(workspace)
    assert await lifecycle.lost_sessions_close() == 1
    reply = await lost.receive_json_from(timeout=5)
    assert (reply["type"], reply["code"]) == ("error", "session_lost")
    assert await lost.receive_output(timeout=5) == {"type": "websocket.close", "code": 4503}
    assert await kept.receive_nothing(timeout=0.2)
    assert await LiveSession.objects.filter(pk=kept_id).aexists()
    assert await lifecycle.lost_sessions_close() == 0
    await lost.disconnect(code=4503)
    await kept.disconnect()


async def test_lifespan_starts_on_startup_and_retires_on_shutdown():
    received: list[dict] = []
    inbox: asyncio.Queue = asyncio.Queue()
    task = asyncio.ensure_future(
        application({"type": "lifespan", "asgi": {"version": "3.0"}}, inbox.get, lambda m: _append(received, m))
    )
    await inbox.put({"type": "lifespan.startup"})

    async def started() -> bool:
        return received == [{"type": "lifespan.startup.complete"}]

    assert await wait_until(started)
    assert await ServerInstance.objects.filter(pk=services.process_identity().boot_id).aexists()
    await inbox.put({"type": "lifespan.shutdown"})
    await asyncio.wait_for(task, timeout=10)
    assert received[-1] == {"type": "lifespan.shutdown.complete"}
    assert not await ServerInstance.objects.filter(pk=services.process_identity().boot_id).aexists()


async def _append(received: list[dict], message: dict) -> None:
    received.append(message)


async def test_stop_detaches_resumable_sessions_and_still_removes_v1_ones(workspace):
    from .communicators import open_session as open_with

    resumable, resumable_reply = await open_with(workspace, fields={"resumable": True})
    v1, v1_reply = await open_with(workspace)
    assert await lifecycle.stop() == 1  # the v1 row; the resumable one is detached, not removed
    messages = []
    for comm in (resumable, v1):
        reply = await comm.receive_json_from(timeout=5)
        assert reply["code"] == "server_shutting_down"
        messages.append(reply["message"])
        assert await comm.receive_output(timeout=5) == {"type": "websocket.close", "code": 4503}
    assert "resume" in messages[0] and "resume" not in messages[1]
    kept = await LiveSession.objects.aget(pk=resumable_reply["session_id"])
    assert kept.detached_at is not None and kept.instance_id is None
    assert not await LiveSession.objects.filter(pk=v1_reply["session_id"]).aexists()
    # The consumers' own ends (daphne cancels them) do not undo the detach.
    await resumable.disconnect(code=4503)
    await v1.disconnect(code=4503)
    assert (await LiveSession.objects.aget(pk=resumable_reply["session_id"])).detached_at is not None


async def test_the_heartbeat_expires_a_detached_session_after_its_grace(workspace, settings):
    from .communicators import open_session as open_with

    settings.WSS_HEARTBEAT_SECONDS, settings.WSS_RESUME_GRACE_SECONDS = 0.1, 0.5
    comm, reply = await open_with(workspace, fields={"resumable": True})
    await comm.disconnect(code=1006)
    await lifecycle.start()
    detached_at = (await LiveSession.objects.aget(pk=reply["session_id"])).detached_at

    async def expired() -> bool:
        return not await LiveSession.objects.filter(pk=reply["session_id"]).aexists()

    assert await wait_until(expired, timeout=5)
    gone_after = (timezone.now() - detached_at).total_seconds()
    assert gone_after >= 0.5  # never before the grace; the bound (grace + heartbeat) is checked live
