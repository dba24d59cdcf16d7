"""The registry changed: tell the admin pages that watch it, at most once per NUDGE_SECONDS per process.

A lifecycle event (events.py) only sets a flag and, if none is pending, a timer; when the
timer fires, one `registry.changed` message goes to the REGISTRY_GROUP of the channel
layer. Whatever churns in between costs one message, and a session pays no layer call.
Each watching page then re-reads what it shows (admin_live.py). A lost nudge is covered by
the watchers' own refresh every WSS_HEARTBEAT_SECONDS.
"""

import asyncio
import logging
import time

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from . import metrics
from .process import process_state

logger = logging.getLogger(__name__)

REGISTRY_GROUP = "wss-registry-watchers"
NUDGE_SECONDS = 0.5
SEND_TIMEOUT_SECONDS = 2.0
SYNC_TIMEOUT_SECONDS = 0.5
SYNC_BACKOFF_SECONDS = 10.0


def registry_changed() -> None:
    """Note that the registry changed; the watchers hear of it within NUDGE_SECONDS. Never raises."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        nudge_now()  # a synchronous caller (an admin action, a command): rare, send at once
        return
    nudges = process_state().nudges
    if nudges.pending_on is loop and not loop.is_closed():
        return
    nudges.pending_on = loop
    loop.call_later(NUDGE_SECONDS, _send_soon, loop)


def _send_soon(loop: asyncio.AbstractEventLoop) -> None:
    nudges = process_state().nudges
    if nudges.pending_on is loop:
        nudges.pending_on = None
    task = loop.create_task(nudge())
    nudges.sending.add(task)  # the loop keeps only weak references to tasks
    task.add_done_callback(nudges.sending.discard)


async def nudge() -> None:
    """Publish one `registry.changed` to the watchers' group; a failure is logged, never raised."""
    try:
        await _nudge_or_raise(SEND_TIMEOUT_SECONDS)
    except Exception as error:
        logger.debug("could not nudge the admin watchers: %s", error)


async def _nudge_or_raise(timeout: float) -> None:
    layer = get_channel_layer()
    if layer is not None:
        await asyncio.wait_for(layer.group_send(REGISTRY_GROUP, {"type": "registry.changed"}), timeout)
        process_state().nudges.sent += 1
        metrics.registry_nudged()


def nudge_now() -> None:
    """Publish a nudge from synchronous code (an operator's terminate), waiting at most SYNC_TIMEOUT_SECONDS.

    After a failure, synchronous callers skip the nudge for SYNC_BACKOFF_SECONDS: an operator's
    request must not wait on a channel layer that is down (the watchers' own refresh covers it).
    """
    nudges = process_state().nudges
    if nudges.sync_failed_at is not None and time.monotonic() - nudges.sync_failed_at < SYNC_BACKOFF_SECONDS:
        return
    try:
        async_to_sync(_nudge_or_raise)(SYNC_TIMEOUT_SECONDS)
    except Exception as error:
        nudges.sync_failed_at = time.monotonic()
        logger.debug("could not nudge the admin watchers: %s", error)
