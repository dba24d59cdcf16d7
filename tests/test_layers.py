"""The in-memory layer: expiry still happens, but the walk over every channel is rate-limited."""

from sessions_app.layers import InMemoryChannelLayer


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
