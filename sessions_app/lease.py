"""The lease: until when this instance may hold sessions, its renewal (by a heartbeat, or on demand), the fence.

A heartbeat older than the instance timeout minus one heartbeat means peers may reap
this instance any moment: it closes its sessions with `session_lost` (4503) itself and
refuses new ones until the lease is renewed. A `new_session` or `resume_session` that
finds the lease lapsed renews it on demand (`lease_held`) rather than wait for the next
heartbeat, so the first request after the registry's return is accepted.
"""

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from .conf import app_settings
from .connections import sessions_held
from .database import registry_call
from .errors import SessionLost
from .instances import instance_heartbeat_sync
from .process import process_state

logger = logging.getLogger(__name__)

# How long a request waits for an on-demand renewal of a lapsed lease before it is answered
# `unavailable`; the renewal itself goes on (bounded as any registry call) for later requests.
RENEWAL_WAIT_SECONDS = 1.0


async def lease_held() -> bool:
    """Whether this instance may take a session now; a lapsed lease is first renewed on demand.

    One renewal runs at a time, and every request that finds the lease lapsed waits on it.
    A renewal is a heartbeat: it renews the lease from its own start, as the heartbeat does,
    so the fence's guarantee holds (peers reap only after a whole instance timeout).
    """
    state = process_state()
    if not state.fenced():
        return True
    loop = asyncio.get_running_loop()
    if state.renewal is None or state.renewal.done() or state.renewal.get_loop() is not loop:
        state.renewal = loop.create_task(_renew(), name="wss-lease-renewal")
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(state.renewal), RENEWAL_WAIT_SECONDS)
    return not state.fenced()


async def _renew() -> None:
    try:
        await beat(instance_heartbeat_sync)
    except Exception as error:  # the registry is still away: the request is answered `unavailable`
        logger.info("on-demand lease renewal failed: %s", str(error) or type(error).__name__)
    else:
        logger.info("lease renewed on demand")


async def beat(function: Callable[[], Any]) -> None:
    """Run a heartbeat (or the registration) and, if it succeeded, renew the lease from its start."""
    state = process_state()
    started = time.monotonic()
    try:
        await registry_call(function)
    except BaseException:
        state.beats_good_since = None
        raise
    if state.beats_good_since is None or state.fenced():
        state.beats_good_since = started  # a lapsed lease breaks the run, even without a failure
    lease_renew(started)


def lease_renew(started: float) -> None:
    """Hold the lease until the instance timeout minus one heartbeat after `started`, then fence."""
    state = process_state()
    until = started + app_settings.WSS_INSTANCE_TIMEOUT_SECONDS - app_settings.WSS_HEARTBEAT_SECONDS
    state.lease_renew(until)
    if state.lease_timer is not None:
        state.lease_timer.cancel()
    loop = asyncio.get_running_loop()
    state.lease_timer = loop.call_at(loop.time() + (until - time.monotonic()), _lease_expired)


def lease_end() -> None:
    """Keep no lease any more (the process is stopping): nothing will fence it."""
    state = process_state()
    if state.lease_timer is not None:
        state.lease_timer.cancel()
        state.lease_timer = None
    state.lease_renew(None)


def _lease_expired() -> None:
    state = process_state()
    if state.stopping or state.lease_until is None:
        return
    left = state.lease_until - time.monotonic()
    if left > 0:
        # Early: uvloop's timers run on its loop clock, read once per loop iteration (in
        # milliseconds), so one can fire before time.monotonic() reaches the lease's end.
        state.lease_timer = asyncio.get_running_loop().call_later(left, _lease_expired)
        return
    state.fencing = asyncio.ensure_future(sessions_fence())


async def sessions_fence() -> int:
    """The lease ran out: close every session with `session_lost` (4503) before a peer can reap it.

    Each closed connection then tries to delete its row; reconciliation removes the rows
    left behind once the registry answers. Returns how many sessions were closed.
    """
    held = sessions_held()
    for connection in held.values():
        with contextlib.suppress(Exception):
            await connection.send_error(SessionLost("This server lost the session registry; reconnect."))
    if held:
        logger.warning(
            "no heartbeat for %g s: closed %d session(s) before peers could reap them",
            app_settings.WSS_INSTANCE_TIMEOUT_SECONDS - app_settings.WSS_HEARTBEAT_SECONDS,
            len(held),
        )
    return len(held)
