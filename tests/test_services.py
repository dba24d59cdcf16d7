"""Registry services: terminate wherever the session lives, instance bookkeeping."""

from datetime import timedelta

import pytest
from channels.testing import WebsocketCommunicator
from django.utils import timezone

from sessions_app import services
from sessions_app.models import LiveSession, ServerInstance
from wssproject.asgi import application

pytestmark = pytest.mark.django_db(transaction=True)


async def open_session(workspace) -> tuple[WebsocketCommunicator, str]:
    comm = WebsocketCommunicator(application, "/ws")
    assert (await comm.connect())[0]
    await comm.send_json_to({"type": "new_session", "workspace_dir": str(workspace)})
    return comm, (await comm.receive_json_from(timeout=5))["session_id"]


async def test_terminate_sends_session_terminated_closes_4410_and_removes_the_row(workspace):
    comm, session_id = await open_session(workspace)
    assert await services.session_terminate(session_id=session_id) is True
    reply = await comm.receive_json_from(timeout=5)
    assert reply["type"] == "error"
    assert reply["code"] == "session_terminated"
    assert await comm.receive_output(timeout=5) == {"type": "websocket.close", "code": 4410}
    assert not await LiveSession.objects.filter(pk=session_id).aexists()
    await comm.disconnect(code=4410)


async def test_terminate_leaves_other_sessions_alone(workspace):
    comm_a, session_a = await open_session(workspace)
    comm_b, session_b = await open_session(workspace)
    await services.session_terminate(session_id=session_a)
    assert (await comm_a.receive_json_from(timeout=5))["code"] == "session_terminated"
    assert await comm_b.receive_nothing(timeout=0.2)
    assert await LiveSession.objects.filter(pk=session_b).aexists()
    await comm_a.disconnect()
    await comm_b.disconnect()


async def test_terminate_of_an_unknown_session_is_false():
    assert await services.session_terminate(session_id="00000000-0000-4000-8000-000000000000") is False


async def test_terminate_deletes_the_row_of_a_dead_instance(workspace):
    dead = await ServerInstance.objects.acreate(host="gone", pid=1, heartbeat_at=timezone.now() - timedelta(hours=1))
    row = await LiveSession.objects.acreate(workspace_dir=str(workspace), channel_name="nobody", instance=dead)
    assert await services.session_terminate(session_id=row.pk) is True
    assert not await LiveSession.objects.filter(pk=row.pk).aexists()


async def test_session_create_re_registers_a_lost_instance(workspace):
    comm, _ = await open_session(workspace)
    await comm.disconnect()
    await ServerInstance.objects.all().adelete()  # as a reaper or a reset registry would
    comm, second = await open_session(workspace)
    assert await LiveSession.objects.filter(pk=second).aexists()
    assert await ServerInstance.objects.acount() == 1
    await comm.disconnect()
