"""Registry-change nudges: many changes in a process make one message to the watchers."""

import asyncio
import time

import pytest
from channels.layers import get_channel_layer
from prometheus_client import REGISTRY

from sessions_app import live
from sessions_app.process import process_state

from .polling import wait_until


@pytest.fixture
async def watcher():
    """A channel in the watchers' group of the in-memory layer; left at the end."""
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add(live.REGISTRY_GROUP, channel)
    yield layer, channel
    await layer.group_discard(live.REGISTRY_GROUP, channel)


async def test_a_burst_of_changes_is_one_nudge_within_the_interval(watcher):
    layer, channel = watcher
    nudges = process_state().nudges
    sent, nudged = nudges.sent, REGISTRY.get_sample_value("wss_registry_nudges_total") or 0.0
    loop = asyncio.get_running_loop()
    started = loop.time()
    for _ in range(500):
        live.registry_changed()
    assert await asyncio.wait_for(layer.receive(channel), 2) == {"type": "registry.changed"}
    assert loop.time() - started < live.NUDGE_SECONDS + 0.5
    await asyncio.sleep(live.NUDGE_SECONDS * 2)  # long enough for a second nudge, were there one
    assert nudges.sent - sent == 1
    assert REGISTRY.get_sample_value("wss_registry_nudges_total") == nudged + 1
    live.registry_changed()  # a later change is nudged again
    await wait_until(lambda: nudges.sent - sent == 2, 2, what="a second nudge")


async def test_a_change_without_a_loop_is_nudged_at_once(watcher):
    layer, channel = watcher
    await asyncio.get_running_loop().run_in_executor(None, live.registry_changed)
    assert await asyncio.wait_for(layer.receive(channel), 2) == {"type": "registry.changed"}


async def test_a_layer_that_is_down_fails_quietly_and_holds_up_no_synchronous_caller(
    unreachable_channel_layer, fresh_process
):
    nudges = fresh_process.nudges
    live.registry_changed()  # on the loop: the timer's send fails, logged at debug level
    await wait_until(lambda: nudges.pending_on is None and not nudges.sending, 3, what="the timer's send to end")
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    await loop.run_in_executor(None, live.registry_changed)  # an operator's request: fails within the bound
    assert time.monotonic() - started < live.SYNC_TIMEOUT_SECONDS + 1
    assert nudges.sync_failed_at is not None
    failed_at = nudges.sync_failed_at
    await loop.run_in_executor(None, live.registry_changed)  # backing off: not even tried
    assert nudges.sync_failed_at == failed_at
    assert nudges.sent == 0
