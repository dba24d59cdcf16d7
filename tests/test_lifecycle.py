"""The process lifecycle: start registers and reaps, stop closes every connection with 4503 and retires."""

import asyncio
import os
import subprocess
import sys
import time
import uuid
from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.db import DatabaseError
from django.utils import timezone

from sessions_app import heartbeat, instances, lease, reconcile, sessions
from sessions_app.models import LiveSession, ServerInstance
from sessions_app.process import process_state
from wssproject.asgi import application

from .communicators import assert_session_held, connect, detached_session, open_session, resume
from .locks import instance_locked
from .polling import wait_until
from .servers import dead_pid

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("fresh_process")]


async def expect_session_lost(comm: WebsocketCommunicator, timeout: float = 10) -> float:
    """Read `session_lost` and close 4503; the time.monotonic() at which the error frame arrived."""
    reply = await comm.receive_json_from(timeout=timeout)
    arrived = time.monotonic()
    assert (reply["type"], reply["code"]) == ("error", "session_lost")
    assert await comm.receive_output(timeout=5) == {"type": "websocket.close", "code": 4503}
    await comm.disconnect(code=4503)
    return arrived


async def whole_heartbeat_passes(timeout: float = 10) -> None:
    """Wait until a heartbeat (its reconciliation included) has run from start to end since the call.

    Heartbeats run one after another: once the row's heartbeat time has moved twice, the
    beat that moved it first has ended, and so has any that was running at the call.
    """
    rows = ServerInstance.objects.filter(pk=process_state().identity.boot_id).values_list("heartbeat_at", flat=True)

    async def moved_from(before) -> bool:
        return await rows.afirst() != before

    for _ in range(2):
        before = await rows.afirst()
        await wait_until(lambda: moved_from(before), timeout, what="a heartbeat")  # noqa: B023 (awaited at once)


async def test_stop_tells_every_connection_server_shutting_down_then_closes_4503(workspace):
    with_session, _ = await open_session(workspace, ok=True)
    without_session = await connect()
    await heartbeat.stop()
    for comm in (with_session, without_session):
        reply = await comm.receive_json_from(timeout=5)
        assert (reply["type"], reply["code"]) == ("error", "server_shutting_down")
        assert await comm.receive_output(timeout=5) == {"type": "websocket.close", "code": 4503}
        await comm.disconnect(code=4503)


async def test_stop_removes_this_instance_and_every_session_of_it(workspace):
    other = await ServerInstance.objects.acreate(host="elsewhere", pid=1)
    comms = [(await open_session(workspace, ok=True))[0] for _ in range(3)]
    assert await LiveSession.objects.acount() == 3
    assert await heartbeat.stop() == 3
    assert await LiveSession.objects.acount() == 0
    assert [pk async for pk in ServerInstance.objects.values_list("pk", flat=True)] == [other.pk]
    for comm in comms:
        await comm.disconnect()


async def test_a_second_stop_does_nothing(workspace):
    comm, _ = await open_session(workspace, ok=True)
    assert await heartbeat.stop() == 1
    assert await heartbeat.stop() == 0
    await comm.disconnect()


async def test_a_stopping_process_refuses_new_connections():
    await heartbeat.stop()
    comm = WebsocketCommunicator(application, "/ws")
    connected, _ = await comm.connect()
    assert not connected
    # End it as a server would: left running into the loop's teardown, the consumer's
    # channels-redis read swallows the teardown's cancellation and the test hangs.
    await comm.disconnect()


async def test_start_registers_this_instance_and_reaps_dead_predecessors_at_once():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    predecessor = await ServerInstance.objects.acreate(host=process_state().identity.host, pid=child.pid)
    await LiveSession.objects.acreate(workspace_dir="/tmp", channel_name="ghost", instance=predecessor)
    await heartbeat.start()
    assert await ServerInstance.objects.filter(pk=process_state().identity.boot_id).aexists()
    assert not await ServerInstance.objects.filter(pk=predecessor.pk).aexists()
    assert await LiveSession.objects.acount() == 0


async def test_a_registry_down_at_start_does_not_stop_it_and_the_heartbeat_catches_up(monkeypatch, settings):
    settings.WSS_HEARTBEAT_SECONDS = 0.05
    predecessor = await ServerInstance.objects.acreate(host=process_state().identity.host, pid=os.getpid())
    register = instances.instance_register_sync

    def registry_down():
        raise DatabaseError("connection refused")

    monkeypatch.setattr(heartbeat, "instance_register_sync", registry_down)
    await heartbeat.start()
    assert await ServerInstance.objects.filter(pk=predecessor.pk).aexists()
    monkeypatch.setattr(heartbeat, "instance_register_sync", register)  # the registry is back

    async def caught_up() -> bool:
        return [pk async for pk in ServerInstance.objects.values_list("pk", flat=True)] == [
            process_state().identity.boot_id
        ]

    await wait_until(caught_up, 10, what="the heartbeat registering and reaping the predecessor")


async def test_the_heartbeat_reaps_a_silent_peer_once_its_own_heartbeats_held_for_a_timeout(
    settings, instance_with_sessions
):
    settings.WSS_HEARTBEAT_SECONDS = 0.05
    settings.WSS_INSTANCE_TIMEOUT_SECONDS = 1
    silent, _ = await sync_to_async(instance_with_sessions)(age=60)
    started = time.monotonic()
    await heartbeat.start()

    async def reaped() -> bool:
        return not await ServerInstance.objects.filter(pk=silent.pk).aexists()

    await wait_until(reaped, 10, what="the silent peer reaped")
    # After an outage shared by every process, all heartbeats are stale: a process that
    # reaped at its first good beat would reap peers that are alive.
    assert time.monotonic() - started >= settings.WSS_INSTANCE_TIMEOUT_SECONDS


async def test_reconciliation_removes_rows_of_this_instance_that_no_connection_holds(settings, workspace):
    settings.WSS_HEARTBEAT_SECONDS = 0.05
    await heartbeat.start()
    held, held_reply = await open_session(workspace, ok=True)
    # A row left behind, as by a delete that failed while the database was away.
    orphan = await LiveSession.objects.acreate(
        workspace_dir=str(workspace), channel_name="gone", instance_id=process_state().identity.boot_id
    )
    elsewhere = await ServerInstance.objects.acreate(host="elsewhere", pid=1)
    peers = await LiveSession.objects.acreate(workspace_dir=str(workspace), channel_name="peer", instance=elsewhere)

    async def orphan_gone() -> bool:
        return not await LiveSession.objects.filter(pk=orphan.pk).aexists()

    await wait_until(orphan_gone, 10, what="the orphan row removed")
    assert await LiveSession.objects.filter(pk=held_reply["session_id"]).aexists()
    assert await LiveSession.objects.filter(pk=peers.pk).aexists()
    assert await held.receive_nothing(timeout=0.2)
    await held.disconnect()


async def test_a_held_session_whose_row_was_deleted_is_closed_with_session_lost_not_recorded_again(settings, workspace):
    settings.WSS_HEARTBEAT_SECONDS = 0.05
    await heartbeat.start()
    lost, lost_reply = await open_session(workspace, ok=True)
    kept, kept_reply = await open_session(workspace, ok=True)
    await LiveSession.objects.filter(pk=lost_reply["session_id"]).adelete()  # an operator or a reaper ended it
    await expect_session_lost(lost)
    assert not await LiveSession.objects.filter(pk=lost_reply["session_id"]).aexists()
    assert await kept.receive_nothing(timeout=0.2)
    assert await LiveSession.objects.filter(pk=kept_reply["session_id"]).aexists()
    await kept.disconnect()


async def test_sessions_of_an_instance_reaped_while_alive_are_closed_and_new_ones_are_recorded(settings, workspace):
    settings.WSS_HEARTBEAT_SECONDS = 0.05
    await heartbeat.start()
    lost, _ = await open_session(workspace, ok=True)
    await ServerInstance.objects.all().adelete()  # a peer presumed this process dead
    await expect_session_lost(lost)
    fresh, fresh_reply = await open_session(workspace, ok=True)
    assert await fresh.receive_nothing(timeout=0.3)  # several reconciliations: it keeps its row
    row = await LiveSession.objects.select_related("instance").aget(pk=fresh_reply["session_id"])
    assert row.instance_id == process_state().identity.boot_id
    await fresh.disconnect()


async def test_sessions_opened_while_reconciliation_runs_keep_their_rows(settings, workspace):
    settings.WSS_HEARTBEAT_SECONDS = 0.01  # reconcile as often as possible, to meet inserts in flight
    await heartbeat.start()
    opened = [await open_session(workspace, ok=True) for _ in range(30)]
    await whole_heartbeat_passes()  # and any reconciliation that met an insert in flight has ended
    for comm, reply in opened:
        await assert_session_held(comm)
        assert await LiveSession.objects.filter(pk=reply["session_id"]).aexists()
        await comm.disconnect()


async def test_a_process_that_cannot_heartbeat_closes_its_sessions_before_peers_may_reap_them(settings, workspace):
    settings.WSS_HEARTBEAT_SECONDS = 0.1
    settings.WSS_INSTANCE_TIMEOUT_SECONDS = 1.0  # lease: 0.9 s after the last good heartbeat
    settings.WSS_REGISTRY_TIMEOUT_SECONDS = 0.3
    await heartbeat.start()
    held, _ = await open_session(workspace, ok=True)
    async with instance_locked(process_state().identity.boot_id):
        blocked_at = time.monotonic()
        fenced_after = await expect_session_lost(held) - blocked_at
        # Until a heartbeat succeeds again, no new session: peers may reap this instance any moment.
        refused, reply = await open_session(workspace)
        assert reply["code"] == "unavailable"
        await refused.disconnect()
    assert fenced_after < settings.WSS_INSTANCE_TIMEOUT_SECONDS

    async def accepted_again() -> bool:
        comm, reply = await open_session(workspace)
        await comm.disconnect()
        return reply["type"] == "new_session"

    await wait_until(accepted_again, 10, what="sessions accepted after the heartbeat recovered")


async def test_a_lease_timer_that_fires_early_still_fences_once_the_lease_has_run_out(settings, workspace, monkeypatch):
    """uvloop reads its clock once per loop iteration: a timer set late in one fires early."""
    held, _ = await open_session(workspace, ok=True)
    loop = asyncio.get_running_loop()
    lease_seconds = settings.WSS_INSTANCE_TIMEOUT_SECONDS - settings.WSS_HEARTBEAT_SECONDS
    with monkeypatch.context() as patched:
        patched.setattr(loop, "time", lambda: time.monotonic() - 0.3)  # the loop's clock, read 0.3 s ago
        lease.lease_renew(time.monotonic() - lease_seconds + 0.5)  # the lease ends in 0.5 s
    ends = process_state().lease_until
    arrived = await expect_session_lost(held, timeout=3)
    assert ends <= arrived < ends + 1


async def test_lifespan_starts_on_startup_and_retires_on_shutdown():
    received: list[dict] = []
    inbox: asyncio.Queue = asyncio.Queue()
    task = asyncio.ensure_future(
        application({"type": "lifespan", "asgi": {"version": "3.0"}}, inbox.get, lambda m: _append(received, m))
    )
    await inbox.put({"type": "lifespan.startup"})

    await wait_until(lambda: received == [{"type": "lifespan.startup.complete"}], 10, what="lifespan startup")
    assert await ServerInstance.objects.filter(pk=process_state().identity.boot_id).aexists()
    await inbox.put({"type": "lifespan.shutdown"})
    await asyncio.wait_for(task, timeout=10)
    assert received[-1] == {"type": "lifespan.shutdown.complete"}
    assert not await ServerInstance.objects.filter(pk=process_state().identity.boot_id).aexists()


async def _append(received: list[dict], message: dict) -> None:
    received.append(message)


async def test_stop_detaches_resumable_sessions_and_still_removes_v1_ones(workspace):
    from .communicators import open_session as open_with

    resumable, resumable_reply = await open_with(workspace, fields={"resumable": True})
    plain, plain_reply = await open_with(workspace)
    assert await heartbeat.stop() == 1  # the non-resumable row; the resumable one is detached, not removed
    messages = []
    for comm in (resumable, plain):
        reply = await comm.receive_json_from(timeout=5)
        assert reply["code"] == "server_shutting_down"
        messages.append(reply["message"])
        assert await comm.receive_output(timeout=5) == {"type": "websocket.close", "code": 4503}
    assert "resume" in messages[0] and "resume" not in messages[1]
    kept = await LiveSession.objects.aget(pk=resumable_reply["session_id"])
    assert kept.detached_at is not None and kept.instance_id is None
    assert not await LiveSession.objects.filter(pk=plain_reply["session_id"]).aexists()
    # The consumers' own ends (daphne cancels them) do not undo the detach.
    await resumable.disconnect(code=4503)
    await plain.disconnect(code=4503)
    assert (await LiveSession.objects.aget(pk=resumable_reply["session_id"])).detached_at is not None


async def test_the_heartbeat_expires_a_detached_session_after_its_grace(workspace, settings):
    from .communicators import open_session as open_with

    settings.WSS_HEARTBEAT_SECONDS, settings.WSS_RESUME_GRACE_SECONDS = 0.1, 0.5
    comm, reply = await open_with(workspace, fields={"resumable": True})
    await comm.disconnect(code=1006)
    await heartbeat.start()
    detached_at = (await LiveSession.objects.aget(pk=reply["session_id"])).detached_at

    async def expired() -> bool:
        return not await LiveSession.objects.filter(pk=reply["session_id"]).aexists()

    assert await wait_until(expired, timeout=5)
    gone_after = (timezone.now() - detached_at).total_seconds()
    assert gone_after >= 0.5  # never before the grace; the bound (grace + heartbeat) is checked live


# --- Reconciliation and resume (protocol v1.1) ----------------------------------------------


async def test_sessions_resumed_while_reconciliation_runs_keep_their_rows(settings, workspace):
    settings.WSS_HEARTBEAT_SECONDS = 0.01  # reconcile as often as possible, to meet resumes in flight
    left = [await detached_session(workspace) for _ in range(20)]
    await heartbeat.start()
    resumed = []
    for reply in left:
        comm = await connect()
        assert (await resume(comm, reply["session_id"], reply["resume_token"]))["type"] == "session_resumed"
        resumed.append((comm, reply["session_id"]))
    await whole_heartbeat_passes()
    for comm, session_id in resumed:
        await assert_session_held(comm)
        row = await LiveSession.objects.aget(pk=session_id)
        assert row.instance_id == process_state().identity.boot_id and row.detached_at is None
        await comm.disconnect()


async def test_reconciliation_detaches_a_resumable_orphan_removes_a_v1_one_and_leaves_detached_rows(workspace):
    holder, _ = await open_session(workspace, ok=True)  # registers this instance
    mine = process_state().identity.boot_id
    orphan = await LiveSession.objects.acreate(
        workspace_dir="/w", channel_name="ended", instance_id=mine, resumable=True, resume_token_hash="h"
    )
    v1_orphan = await LiveSession.objects.acreate(workspace_dir="/w", channel_name="ended-too", instance_id=mine)
    waiting_since = timezone.now() - timedelta(seconds=5)
    waiting = await LiveSession.objects.acreate(
        workspace_dir="/w", channel_name="", instance=None, detached_at=waiting_since, resumable=True
    )
    result = await reconcile.reconcile()
    assert (result.removed, result.detached, result.lost, result.moved) == (1, 1, frozenset(), frozenset())
    row = await LiveSession.objects.aget(pk=orphan.pk)
    assert row.detached_at is not None and row.instance_id is None
    assert not await LiveSession.objects.filter(pk=v1_orphan.pk).aexists()
    assert (await LiveSession.objects.aget(pk=waiting.pk)).detached_at == waiting_since
    await holder.disconnect()


async def test_reconciliation_closes_a_session_resumed_elsewhere_whose_notice_was_lost_with_4409(workspace):
    comm, reply = await open_session(workspace, fields={"resumable": True})
    other = await ServerInstance.objects.acreate(host="elsewhere", pid=2)
    # A resume on another process moved the row; its channel-layer notice never arrived.
    await LiveSession.objects.filter(pk=reply["session_id"]).aupdate(instance=other, channel_name="elsewhere!x")
    result = await reconcile.reconcile()
    assert result.moved == {uuid.UUID(reply["session_id"])} and not result.lost
    frame = await comm.receive_json_from(timeout=5)
    assert frame["code"] == "session_taken_over"
    assert await comm.receive_output(timeout=5) == {"type": "websocket.close", "code": 4409}
    await comm.disconnect(code=4409)
    row = await LiveSession.objects.aget(pk=reply["session_id"])
    assert (row.instance_id, row.channel_name, row.detached_at) == (other.pk, "elsewhere!x", None)


async def test_a_session_resumed_after_this_instance_was_reaped_keeps_its_row(workspace):
    reply = await detached_session(workspace)
    await ServerInstance.objects.all().adelete()  # a peer presumed this process dead (the detached row stays)
    comm = await connect()
    resumed = await resume(comm, reply["session_id"], reply["resume_token"])
    assert resumed["type"] == "session_resumed"  # registers the instance again
    result = await reconcile.reconcile()
    assert not result.lost and not result.moved and not result.removed
    await assert_session_held(comm)
    row = await LiveSession.objects.aget(pk=reply["session_id"])
    assert row.instance_id == process_state().identity.boot_id
    await comm.disconnect()


@pytest.mark.production
async def test_a_lifecycle_call_stuck_in_the_database_does_not_hold_up_the_next_heartbeat(
    production_services, settings
):
    settings.WSS_HEARTBEAT_SECONDS = 0.1
    settings.WSS_REGISTRY_TIMEOUT_SECONDS = 0.3
    # A dead predecessor whose row another transaction holds: reaping it hangs (up to the 2 s lock timeout).
    predecessor = await ServerInstance.objects.acreate(host="this-host", pid=dead_pid())
    boot_id = process_state().identity.boot_id
    beats: set = set()

    async def three_beats() -> bool:
        beats.add(await ServerInstance.objects.filter(pk=boot_id).values_list("heartbeat_at", flat=True).afirst())
        return len(beats - {None}) >= 3

    async with instance_locked(predecessor.pk):
        await heartbeat.start()  # registers, then gets stuck reaping the predecessor
        # Each heartbeat runs on a fresh thread instead of queueing behind the stuck call.
        await wait_until(three_beats, 1.5, what="heartbeats while a lifecycle call is stuck")


async def test_a_resume_that_outlived_the_lease_is_answered_then_closed_with_session_lost(workspace):
    reply = await detached_session(workspace)
    comm = await connect()
    process_state().lease_renew(time.monotonic() + 0.2)  # the lease ends while the writer is busy
    busy = sessions.registry_writer.call(lambda: time.sleep(0.5))
    frame = await resume(comm, reply["session_id"], reply["resume_token"])
    await busy
    assert frame["type"] == "session_resumed"  # the client has its new token...
    lost = await comm.receive_json_from(timeout=5)  # ...and is sent to resume elsewhere
    assert lost["code"] == "session_lost"
    assert await comm.receive_output(timeout=5) == {"type": "websocket.close", "code": 4503}
    await comm.disconnect(code=4503)
