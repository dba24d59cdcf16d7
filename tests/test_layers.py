"""The in-memory layer: expiry still happens, but the walk over every channel is rate-limited.
The Redis layer: a consumer's receive waits out a Redis outage and resumes when Redis is back.
"""

import asyncio
import urllib.parse

import pytest
from prometheus_client import REGISTRY

from sessions_app.layers import InMemoryChannelLayer, RedisChannelLayer

from .polling import wait_until
from .proxy import TcpProxy
from .servers import free_port


async def receive_after_sending(layer: InMemoryChannelLayer, channel: str) -> dict:
    await layer.send(channel, {"type": "ping"})
    return await layer.receive(channel)


async def test_expired_messages_are_dropped_by_the_next_receive():
    layer = InMemoryChannelLayer(expiry=-1, clean_interval=0)
    await layer.send("stale", {"type": "old"})
    layer.expiry = 60
    assert await receive_after_sending(layer, "fresh") == {"type": "ping"}
    assert "stale" not in layer.channels


async def test_receives_within_the_interval_skip_the_walk():
    layer = InMemoryChannelLayer(expiry=60, clean_interval=3600)
    await receive_after_sending(layer, "first")  # walks once
    layer.expiry = -1
    await layer.send("stale", {"type": "old"})
    layer.expiry = 60
    assert await receive_after_sending(layer, "second") == {"type": "ping"}
    assert "stale" in layer.channels  # not walked again yet


async def test_the_project_uses_this_layer_without_redis_and_channels_redis_with_it(settings):
    from channels.layers import get_channel_layer
    from channels_redis.core import RedisChannelLayer

    expected = RedisChannelLayer if getattr(settings, "REDIS_URL", "") else InMemoryChannelLayer
    assert isinstance(get_channel_layer(), expected)


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_redis_layer_receive_waits_while_redis_is_unreachable_and_counts_the_failures():
    layer = RedisChannelLayer(hosts=[f"redis://127.0.0.1:{free_port()}/0"])
    failures, outages = (
        sample("wss_channel_layer_failures_total", operation="receive"),
        sample("wss_channel_layer_outages_total"),
    )
    receive = asyncio.ensure_future(layer.receive(await layer.new_channel()))
    try:
        await wait_until(layer.unavailable, timeout=10, what="the layer marked down")
        assert "ConnectionError" in layer.unavailable()
        await asyncio.sleep(0.3)  # the probe retries meanwhile: still one outage, and the receive waits on
        assert not receive.done()
        assert sample("wss_channel_layer_failures_total", operation="receive") == failures + 1
        assert sample("wss_channel_layer_failures_total", operation="probe") >= 1
        assert sample("wss_channel_layer_outages_total") == outages + 1
        assert sample("wss_channel_layer_up") == 0
    finally:
        receive.cancel()
        await asyncio.gather(receive, return_exceptions=True)


@pytest.mark.production
async def test_redis_layer_receive_resumes_after_an_outage_with_what_was_sent_meanwhile(production_services, settings):
    url = urllib.parse.urlsplit(settings.REDIS_URL)
    proxy = await TcpProxy(url.hostname, url.port or 6379).start()
    prefix = f"test-layers-{free_port()}"
    cut_off = RedisChannelLayer(hosts=[f"redis://127.0.0.1:{proxy.port}{url.path}"], prefix=prefix)
    linked = RedisChannelLayer(hosts=[settings.REDIS_URL], prefix=prefix)  # another process, still reaching Redis
    channel = await cut_off.new_channel()
    receive = asyncio.ensure_future(cut_off.receive(channel))
    try:
        await asyncio.sleep(0.2)  # the receive is blocked in Redis when the link goes
        proxy.cut()
        await wait_until(cut_off.unavailable, timeout=10, what="the layer marked down")
        await linked.send(channel, {"type": "sent.during"})
        await asyncio.sleep(0.5)
        assert not receive.done()
        proxy.restore()
        assert await asyncio.wait_for(receive, 10) == {"type": "sent.during"}
        assert cut_off.unavailable() is None
        assert sample("wss_channel_layer_up") == 1
    finally:
        receive.cancel()
        await asyncio.gather(receive, return_exceptions=True)
        await linked.flush()
        await cut_off.close_pools()
        await proxy.stop()


@pytest.mark.production
async def test_a_redis_layer_receive_cancelled_at_any_step_ends_at_once(production_services, settings):
    """Cancelled one event-loop step later each time, while it connects, writes and blocks: every receive ends.

    A cancellation that arrives as a command's write completes used to be dropped below the
    layer (sessions_app/compat.py), and the receive then blocked in Redis forever.
    """
    config = settings.CHANNEL_LAYERS["default"]["CONFIG"]
    for steps in range(60):
        layer = RedisChannelLayer(**{**config, "prefix": f"test-cancel-{free_port()}"})
        receive = asyncio.ensure_future(layer.receive(await layer.new_channel()))
        for _ in range(steps):
            await asyncio.sleep(0)
        receive.cancel()
        done, _ = await asyncio.wait([receive], timeout=2)
        if not done:
            receive.cancel()  # a second cancellation reaches it in its blocking read: end it before failing
            await asyncio.wait([receive], timeout=10)
            pytest.fail(f"a receive cancelled after {steps} loop steps was still running 2 s later")
        assert receive.cancelled()
        await layer.close_pools()
