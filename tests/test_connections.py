"""Connection tracking: a process that has begun to stop takes no more connections."""

import pytest
from channels.testing import WebsocketCommunicator

from sessions_app import heartbeat
from wssproject.asgi import application

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("fresh_process")]


async def test_a_stopping_process_refuses_new_connections():
    await heartbeat.stop()
    comm = WebsocketCommunicator(application, "/ws")
    connected, _ = await comm.connect()
    assert not connected
    # End it as a server would: left running into the loop's teardown, the consumer's
    # channels-redis read swallows the teardown's cancellation and the test hangs.
    await comm.disconnect()
