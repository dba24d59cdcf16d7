"""Terminating a session wherever it lives: through the channel layer to its consumer, or its row itself."""

import asyncio
import threading
import time
from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone

from sessions_app import sessions, terminate
from sessions_app.models import LiveSession, ServerInstance

from .communicators import assert_session_held, open_session

pytestmark = pytest.mark.django_db(transaction=True)


async def test_terminate_sends_session_terminated_closes_4410_and_removes_the_row(workspace):
    comm, reply = await open_session(workspace)
    session_id = reply["session_id"]
    assert await terminate.session_terminate_request(session_id=session_id) == terminate.TerminateResult.DELIVERED
    reply = await comm.receive_json_from(timeout=5)
    assert reply["type"] == "error"
    assert reply["code"] == "session_terminated"
    assert await comm.receive_output(timeout=5) == {"type": "websocket.close", "code": 4410}
    assert not await LiveSession.objects.filter(pk=session_id).aexists()
    await comm.disconnect(code=4410)


async def test_terminate_leaves_other_sessions_alone(workspace):
    comm_a, reply = await open_session(workspace)
    session_a = reply["session_id"]
    comm_b, reply = await open_session(workspace)
    session_b = reply["session_id"]
    sent = time.monotonic()
    await terminate.session_terminate_request(session_id=session_a)
    assert (await comm_a.receive_json_from(timeout=5))["code"] == "session_terminated"
    # A message for B would have left in the same call as A's, which took `delivered` to
    # arrive: ten times that (at least a second) is long enough for it to show.
    delivered = time.monotonic() - sent
    assert await comm_b.receive_nothing(timeout=max(1.0, 10 * delivered))
    await assert_session_held(comm_b)
    assert await LiveSession.objects.filter(pk=session_b).aexists()
    await comm_a.disconnect()
    await comm_b.disconnect()


async def test_terminate_of_an_unknown_session_is_not_found():
    result = await terminate.session_terminate_request(session_id="00000000-0000-4000-8000-000000000000")
    assert result == terminate.TerminateResult.NOT_FOUND


async def test_terminate_deletes_the_row_of_a_dead_instance(workspace, instance_with_sessions):
    _, [row] = await sync_to_async(instance_with_sessions)(workspaces=[str(workspace)], age=3600)
    assert await terminate.session_terminate_request(session_id=row.pk) == terminate.TerminateResult.REMOVED
    assert not await LiveSession.objects.filter(pk=row.pk).aexists()


async def test_terminates_delete_is_a_registry_write_in_the_writers_order(workspace):
    dead = await ServerInstance.objects.acreate(host="gone", pid=1, heartbeat_at=timezone.now() - timedelta(hours=1))
    row = await LiveSession.objects.acreate(workspace_dir=str(workspace), channel_name="nobody", instance=dead)
    gate = threading.Event()
    held = sessions.registry_writer.call(lambda: gate.wait(timeout=10))
    removing = asyncio.create_task(terminate.session_terminate_request(session_id=row.pk))
    await asyncio.sleep(0.3)
    assert not removing.done()  # queued behind the writer's earlier work
    gate.set()
    await held
    assert await removing == terminate.TerminateResult.REMOVED
    assert not await LiveSession.objects.filter(pk=row.pk).aexists()


async def test_terminate_that_the_channel_layer_does_not_take_is_not_delivered(workspace, unreachable_channel_layer):
    instance = await ServerInstance.objects.acreate(host="h", pid=1)
    row = await LiveSession.objects.acreate(
        workspace_dir=str(workspace), channel_name="specific.abc!def", instance=instance
    )
    assert await terminate.session_terminate_request(session_id=row.pk) == terminate.TerminateResult.NOT_DELIVERED
    assert await LiveSession.objects.filter(pk=row.pk).aexists()  # nothing was done
