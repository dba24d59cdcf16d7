"""The contracts of sessions_app/compat.py: each test fails when an upgrade changes what a workaround relies on."""

import asyncio

import pytest
import redis.asyncio

from sessions_app.compat import _CancellationKept
from sessions_app.layers import RedisChannelLayer

from .servers import free_port

# --- redis-py: a cancellation that asyncio.wait_for drops ---


async def test_wait_for_still_drops_a_cancellation_that_arrives_as_its_work_completes():
    """CPython gh-86296. When this fails (Python 3.12 fixed it), the redis-py section of compat can go."""

    async def write() -> str:
        return "written"

    async def command() -> str:
        return await asyncio.wait_for(write(), 10)

    task = asyncio.ensure_future(command())
    await asyncio.sleep(0)  # the command starts the write
    await asyncio.sleep(0)  # the write completes; wait_for has not woken up yet
    task.cancel()
    assert await task == "written"
    assert task.cancelling() == 1  # the task still says it was cancelled: what compat detects


@pytest.mark.parametrize(
    ("url", "connection_class"),
    [("redis://127.0.0.1:1/0", redis.asyncio.Connection), ("rediss://127.0.0.1:1/0", redis.asyncio.SSLConnection)],
)
def test_the_redis_layer_connects_with_the_cancellation_kept_whatever_the_scheme(url, connection_class):
    pool = RedisChannelLayer(hosts=[url]).create_pool(0)
    connection = pool.make_connection()  # what the pool hands out; nothing connects yet
    assert isinstance(connection, connection_class)
    assert isinstance(connection, _CancellationKept)


@pytest.mark.production
async def test_redis_py_writes_each_command_through_send_packed_command(production_services, settings, monkeypatch):
    """The one method compat overrides must be on the path of every command channels-redis sends."""
    written = []
    kept = _CancellationKept.send_packed_command

    async def counted(self, command, check_health: bool = True) -> None:
        written.append(command)
        await kept(self, command, check_health)

    monkeypatch.setattr(_CancellationKept, "send_packed_command", counted)
    config = settings.CHANNEL_LAYERS["default"]["CONFIG"]
    layer = RedisChannelLayer(**{**config, "prefix": f"test-compat-{free_port()}"})
    try:
        channel = await layer.new_channel()
        await layer.send(channel, {"type": "hello"})
        before = len(written)
        assert await layer.receive(channel) == {"type": "hello"}
        assert len(written) > before
    finally:
        await layer.flush()
