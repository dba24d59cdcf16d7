"""The server process's life: register at start, heartbeat and reap while running, retire on stop.

    start     register this instance, reap this host's dead predecessors, start the heartbeat
    running   every WSS_HEARTBEAT_SECONDS: refresh the heartbeat and renew the lease (lease.py);
              reap instances silent for longer than WSS_INSTANCE_TIMEOUT_SECONDS (any live
              process reaps any dead one, once its own heartbeats have held for that long);
              remove detached sessions whose WSS_RESUME_GRACE_SECONDS ran out (`expired`);
              reconcile this instance's rows with the sessions its connections hold
    stop      refuse new connections, send `server_shutting_down` + close 4503 to every
              connection still open, delete this instance and its non-resumable
              sessions, detach its resumable ones (a client resumes them elsewhere)

The servers call start and stop through server_hooks.py.
"""

import asyncio
import contextlib
import logging
import time

from django.db import DatabaseError

from . import activity, events
from .conf import app_settings
from .connections import closes_wait, connections_open
from .database import registry_call, registry_close
from .errors import ServerShuttingDown
from .instances import (
    instance_heartbeat_sync,
    instance_predecessors_reap_sync,
    instance_register_sync,
    instance_retire_sync,
    sessions_expire_sync,
    sessions_reap_sync,
)
from .lease import beat, lease_end
from .process import Phase, process_state
from .reconcile import reconcile

logger = logging.getLogger(__name__)


async def start() -> None:
    """Register this instance, reap this host's dead predecessors, start the heartbeat. Never raises."""
    state = process_state()
    if state.heartbeat is not None:
        return
    # While this first registration runs (daphne already accepts connections), a session
    # insert registers the instance itself, so new sessions need not be refused; only a
    # process that could not register refuses them until a heartbeat (or a request's own
    # renewal of the lease) shows it alive.
    registered = False
    try:
        await beat(instance_register_sync)
        registered = True
        await predecessors_reap()
    except (DatabaseError, TimeoutError) as error:
        if not registered:
            state.lease_expire()
        # A registry down at start must not stop the server: the heartbeat retries.
        logger.warning("registry work at start failed (%s); the heartbeat will retry", _describe(error))
    except Exception:
        if not registered:
            state.lease_expire()
        logger.exception("registry work at start failed; the heartbeat will retry")
    state.heartbeat = asyncio.get_running_loop().create_task(heartbeat_loop(), name="wss-heartbeat")
    state.phase_set(Phase.RUNNING)
    logger.info(
        "instance %s started; heartbeat every %g s, peers reaped after %g s",
        state.identity.boot_id,
        app_settings.WSS_HEARTBEAT_SECONDS,
        app_settings.WSS_INSTANCE_TIMEOUT_SECONDS,
    )


async def predecessors_reap() -> None:
    """Reap this host's dead predecessors, once per process."""
    state = process_state()
    if not state.predecessors_reaped:
        events.sessions_reaped(await registry_call(instance_predecessors_reap_sync))
        state.predecessors_reaped = True


async def heartbeat_loop() -> None:
    """Every WSS_HEARTBEAT_SECONDS: one `heartbeat()`."""
    while True:
        await asyncio.sleep(app_settings.WSS_HEARTBEAT_SECONDS)
        await heartbeat()


async def heartbeat() -> None:
    """Refresh this instance's heartbeat, reap dead instances, reconcile this instance's rows. Never raises."""
    try:
        await beat(instance_heartbeat_sync)
    except Exception as error:
        logger.warning("heartbeat failed (%s); retrying in %g s", _describe(error), app_settings.WSS_HEARTBEAT_SECONDS)
        return
    try:
        await predecessors_reap()  # in case the registry was down at start
        if reaping_allowed():
            events.sessions_reaped(await registry_call(sessions_reap_sync))
    except Exception as error:
        logger.warning("reaping failed (%s); retrying in %g s", _describe(error), app_settings.WSS_HEARTBEAT_SECONDS)
    try:
        # Not held back by the reaper rule: a detach time is the registry's own clock, so the
        # grace is the same whoever counts it, and the bound (grace + one heartbeat) holds
        # even for a process that has only just started.
        events.sessions_expired(await registry_call(sessions_expire_sync))
    except Exception as error:
        logger.warning("expiry failed (%s); retrying in %g s", _describe(error), app_settings.WSS_HEARTBEAT_SECONDS)
    try:
        await reconcile()
    except Exception as error:
        logger.warning(
            "reconciliation failed (%s); retrying in %g s", _describe(error), app_settings.WSS_HEARTBEAT_SECONDS
        )
    try:
        await activity_write()
    except Exception as error:
        logger.warning(
            "history write failed (%s); retrying in %g s", _describe(error), app_settings.WSS_HEARTBEAT_SECONDS
        )


async def activity_write(*, stopped: bool = False) -> None:
    """Upsert this instance's sessions opened and ended per minute (activity.py): one statement."""
    snapshot = activity.counts_snapshot()
    await registry_call(lambda: activity.minutes_write_sync(snapshot, stopped=stopped))
    activity.counts_written(snapshot)


def _describe(error: BaseException) -> str:
    return str(error) or type(error).__name__


def reaping_allowed() -> bool:
    """Whether this process may reap peers: its own heartbeats have held for a whole instance timeout.

    After an outage every process shared, each one's heartbeat is stale; the first to
    recover would otherwise reap all the others, alive as they are.
    """
    since = process_state().beats_good_since
    return since is not None and time.monotonic() - since >= app_settings.WSS_INSTANCE_TIMEOUT_SECONDS


async def stop() -> int:
    """Close every connection with 4503, then delete this instance and its sessions; returns rows removed.

    Idempotent and never raises: a second call (SIGINT after SIGTERM) returns 0.
    """
    state = process_state()
    if state.stopping:
        return 0
    state.phase_set(Phase.STOPPING)
    if state.heartbeat is not None:
        state.heartbeat.cancel()
        state.heartbeat = None
    lease_end()
    connections = connections_open()
    for connection in connections:
        resumable = connection.session is not None and connection.session.resumable
        # Resumable sessions are detached by the retire below, not deleted: say so.
        text = "This server is shutting down; resume the session on a new connection." if resumable else None
        try:
            await connection.send_error(ServerShuttingDown(text or "This server is shutting down; reconnect."))
        except Exception:
            logger.debug("could not tell a connection about the shutdown", exc_info=True)
    removed = 0
    try:
        # Bounded: the reaper of any live peer covers a stop that gave up.
        timeout = app_settings.WSS_STOP_TIMEOUT_SECONDS
        removed = await registry_call(instance_retire_sync, timeout=timeout)
    except TimeoutError:
        logger.error("the registry did not answer within %g s; peers will reap this instance", timeout)
    except Exception:
        logger.exception("could not remove this instance's sessions; peers will reap them")
    await closes_wait()
    with contextlib.suppress(Exception):  # after the closes, so their ends count; it says "stopped", not reaped
        await activity_write(stopped=True)
    await registry_close()
    logger.info("stopped: closed %d connection(s), removed %d session row(s)", len(connections), removed)
    return removed
