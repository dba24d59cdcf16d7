"""Reconciliation: this instance's rows follow the sessions its connections hold; sessions whose rows went are lost."""

import asyncio
import json
import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from sessions_app import heartbeat, reconcile
from sessions_app.models import LiveSession, ServerInstance
from sessions_app.process import process_state

from .communicators import (
    assert_session_held,
    connect,
    detached_session,
    expect_session_lost,
    new_session_frame,
    open_session,
    resume,
    ws_connect_session,
)
from .polling import SLACK, wait_until
from .servers import PROXIED_HEARTBEAT, row_ids_equal, session_ids

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("fresh_process")]


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


# --- The registry behind a loopback proxy that cuts it (PostgreSQL) -------------------------


@pytest.mark.production
async def test_rows_of_sessions_closed_while_the_database_was_cut_go_within_one_interval_of_its_return(
    proxied_server, workspace
):
    server, proxy = await proxied_server()
    opened = [await ws_connect_session(server.url, workspace, timeout=10) for _ in range(30)]
    kept, kept_id = await ws_connect_session(server.url, workspace, timeout=10)
    proxy.cut()
    await asyncio.gather(*(ws.close() for ws, _ in opened))
    await wait_until(
        lambda: server.log().count("registry delete of session") >= len(opened), 10, what="the deletes failing"
    )
    assert len(await session_ids()) == len(opened) + 1  # the lie the reconciler must undo
    proxy.restore()
    took = await wait_until(
        lambda: row_ids_equal({kept_id}), PROXIED_HEARTBEAT + SLACK, what="the closed sessions' rows removed"
    )
    print(f"\nrows of {len(opened)} sessions closed during a cut gone {took:.2f} s after restore")
    await kept.send(new_session_frame(workspace))
    assert json.loads(await asyncio.wait_for(kept.recv(), 10))["code"] == "session_exists"  # kept its session
    await kept.close()
