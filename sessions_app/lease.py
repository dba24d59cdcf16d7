"""The lease: until when this instance may hold sessions, its renewal by a good heartbeat, and the fence.

A heartbeat older than the instance timeout minus one heartbeat means peers may reap
this instance any moment: it closes its sessions with `session_lost` (4503) itself and
refuses new ones until the lease is renewed.
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
from .process import process_state

logger = logging.getLogger(__name__)


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
    if state.fenced() and not state.stopping:
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
