"""The server process's life: register at start, heartbeat and reap while running, retire on stop.

    start     register this instance, reap this host's dead predecessors, start the heartbeat
    running   every WSS_HEARTBEAT_SECONDS: refresh the heartbeat, reap instances silent for
              longer than WSS_INSTANCE_TIMEOUT_SECONDS (any live process reaps any dead one);
              if this instance itself was reaped, register again and close the sessions
              that lost their rows with `session_lost` (4503)
    stop      refuse new connections, send `server_shutting_down` + close 4503 to every
              connection still open, delete this instance and all its sessions

Hooks: under daphne, Twisted's reactor (`callWhenRunning`, and a "before shutdown" trigger
that daphne waits for); under uvicorn and other ASGI servers, the ASGI lifespan protocol
(`lifespan_app`), and under uvicorn its signal handlers too, so the stop runs before
uvicorn closes the sockets (`uvicorn_signals_chain`). Registry writes run on one dedicated
thread, so the heartbeat never waits behind the consumers' queries and uses one database
connection.
"""

import asyncio
import contextlib
import logging
import signal
import sys
import weakref
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any, Protocol, TypeVar

from django.db import DatabaseError, close_old_connections, connections

from . import events, services
from .conf import app_settings
from .errors import ProtocolError, ServerShuttingDown, SessionLost

logger = logging.getLogger(__name__)

T = TypeVar("T")

# How long a stop waits for the clients' close handshakes before letting the server exit.
CLOSE_HANDSHAKE_SECONDS = 2.0
# How long a stop waits for the registry before giving up (the reaper then covers it).
RETIRE_TIMEOUT_SECONDS = 15.0


class Connection(Protocol):
    """What the lifecycle needs of a consumer: its session, and rendering an error frame."""

    session: services.SessionRecord | None

    async def send_error(self, error: ProtocolError) -> None: ...


_connections: "weakref.WeakSet[Any]" = weakref.WeakSet()
_executor: ThreadPoolExecutor | None = None
_heartbeat: asyncio.Task | None = None
_stopping = False
_predecessors_reaped = False
_recreation_seen: datetime | None = None


def connection_opened(connection: Connection) -> None:
    """Track an accepted connection so a stop can close it."""
    _connections.add(connection)


def connection_closed(connection: Connection) -> None:
    """Forget a connection; forgetting an unknown one is fine."""
    _connections.discard(connection)


def stopping() -> bool:
    """Whether this process has begun to stop: new connections are refused."""
    return _stopping


async def registry_call(function: Callable[[], T]) -> T:
    """Run a registry function on the lifecycle thread (its own database connection)."""
    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wss-lifecycle")

    def call() -> T:
        close_old_connections()
        try:
            return function()
        finally:
            close_old_connections()

    return await asyncio.get_running_loop().run_in_executor(_executor, call)


async def executor_close() -> None:
    """Close the lifecycle thread's database connection and the thread itself."""
    global _executor
    if _executor is None:
        return
    executor, _executor = _executor, None
    with contextlib.suppress(Exception):
        await asyncio.get_running_loop().run_in_executor(executor, connections.close_all)
    executor.shutdown(wait=False)


async def start() -> None:
    """Register this instance, reap this host's dead predecessors, start the heartbeat. Never raises."""
    global _heartbeat
    if _heartbeat is not None:
        return
    try:
        await registry_call(services.instance_register_sync)
        await predecessors_reap()
    except DatabaseError as error:
        # A registry down at start must not stop the server: the heartbeat retries.
        logger.warning("instance registration at start failed (%s); the heartbeat will retry", error)
    except Exception:
        logger.exception("instance registration at start failed; the heartbeat will retry")
    _heartbeat = asyncio.get_running_loop().create_task(heartbeat_loop(), name="wss-heartbeat")
    logger.info(
        "instance %s started; heartbeat every %g s, peers reaped after %g s",
        services.process_identity().boot_id,
        app_settings.WSS_HEARTBEAT_SECONDS,
        app_settings.WSS_INSTANCE_TIMEOUT_SECONDS,
    )


async def predecessors_reap() -> None:
    """Reap this host's dead predecessors, once per process."""
    global _predecessors_reaped
    if not _predecessors_reaped:
        events.sessions_reaped(await registry_call(services.instance_predecessors_reap_sync))
        _predecessors_reaped = True


async def heartbeat_loop() -> None:
    """Every WSS_HEARTBEAT_SECONDS: refresh this instance's heartbeat, then reap dead instances."""
    while True:
        await asyncio.sleep(app_settings.WSS_HEARTBEAT_SECONDS)
        try:
            await registry_call(services.instance_heartbeat_sync)
            await predecessors_reap()  # in case the registry was down at start
            events.sessions_reaped(await registry_call(services.sessions_reap_sync))
            await lost_sessions_close()
        except DatabaseError as error:
            logger.warning("heartbeat failed (%s); retrying in %g s", error, app_settings.WSS_HEARTBEAT_SECONDS)
        except Exception:
            logger.exception("heartbeat failed; retrying in %g s", app_settings.WSS_HEARTBEAT_SECONDS)


async def lost_sessions_close() -> int:
    """Close, with `session_lost` and 4503, this process's sessions whose rows a peer reaped.

    That happens when this process missed its heartbeats for longer than the timeout (a
    database outage, a stalled process) and was presumed dead. Returns how many were closed.
    """
    global _recreation_seen
    recreated = services.instance_recreated_at()
    if recreated is None or recreated == _recreation_seen:
        return 0
    _recreation_seen = recreated
    lost = [c for c in list(_connections) if c.session is not None and c.session.created_at < recreated]
    for connection in lost:
        with contextlib.suppress(Exception):
            await connection.send_error(SessionLost("This session was lost by the registry; reconnect."))
    logger.warning("closed %d session(s) whose rows were reaped while this process lived", len(lost))
    return len(lost)


async def stop() -> int:
    """Close every connection with 4503, then delete this instance and its sessions; returns rows removed.

    Idempotent and never raises: a second call (SIGINT after SIGTERM) returns 0.
    """
    global _stopping, _heartbeat
    if _stopping:
        return 0
    _stopping = True
    if _heartbeat is not None:
        _heartbeat.cancel()
        _heartbeat = None
    connections = list(_connections)
    for connection in connections:
        try:
            await connection.send_error(ServerShuttingDown("This server is shutting down; reconnect."))
        except Exception:
            logger.debug("could not tell a connection about the shutdown", exc_info=True)
    removed = 0
    try:
        removed = await asyncio.wait_for(registry_call(services.instance_retire_sync), RETIRE_TIMEOUT_SECONDS)
    except Exception:
        logger.exception("could not remove this instance's sessions; peers will reap them")
    await closes_wait(CLOSE_HANDSHAKE_SECONDS)
    await executor_close()
    logger.info("stopped: closed %d connection(s), removed %d session row(s)", len(connections), removed)
    return removed


async def closes_wait(timeout: float) -> None:
    """Give the clients' close handshakes up to `timeout` seconds, so they see our close frame."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while _connections and loop.time() < deadline:
        await asyncio.sleep(0.05)


# --- Server hooks ---------------------------------------------------------------------------


def daphne_install() -> bool:
    """Hook start and stop into daphne's Twisted reactor, if this process runs one.

    Called when the ASGI module is imported: daphne imports it before it starts its
    reactor and before it registers its own "before shutdown" trigger, so ours runs first
    and daphne's reactor waits for it. Returns whether the hooks were installed.
    """
    reactor = sys.modules.get("twisted.internet.reactor")
    if reactor is None or not hasattr(reactor, "_asyncioEventloop"):
        # Importing the reactor here would install the wrong one: only hook one daphne made.
        return False
    from twisted.internet import defer

    def start_soon() -> Awaitable:
        return defer.Deferred.fromFuture(asyncio.ensure_future(start(), loop=reactor._asyncioEventloop))

    def stop_before_shutdown() -> Awaitable:
        return defer.Deferred.fromFuture(asyncio.ensure_future(stop(), loop=reactor._asyncioEventloop))

    reactor.callWhenRunning(start_soon)
    reactor.addSystemEventTrigger("before", "shutdown", stop_before_shutdown)
    return True


def uvicorn_signals_chain() -> bool:
    """Under uvicorn, run stop() on SIGTERM/SIGINT before uvicorn's own handler; returns whether it did.

    uvicorn's shutdown closes every WebSocket with 1012 before the lifespan shutdown, so the
    clients would never see `server_shutting_down` and 4503. Its handlers are plain
    `signal.signal` ones, installed before the lifespan starts: each is wrapped here so that
    the signal first runs stop() (the frames, the close handshakes, the registry), then hands
    the signal to uvicorn. A second signal during the stop goes straight to uvicorn (a second
    Ctrl-C still forces the exit).
    """
    loop = asyncio.get_running_loop()
    chained = False
    for signum in (signal.SIGINT, signal.SIGTERM):
        previous = signal.getsignal(signum)
        if not callable(previous) or not getattr(previous, "__module__", "").startswith("uvicorn."):
            continue

        def on_signal(number: int, frame: Any, previous: Callable = previous) -> None:
            if _stopping:
                previous(number, frame)
                return

            def stop_then_hand_over() -> None:
                task = loop.create_task(stop(), name="wss-stop")
                task.add_done_callback(lambda _: previous(number, None))

            loop.call_soon_threadsafe(stop_then_hand_over)

        signal.signal(signum, on_signal)
        chained = True
    return chained


async def lifespan_app(scope: dict[str, Any], receive: Callable, send: Callable) -> None:
    """The ASGI lifespan protocol (uvicorn, hypercorn): start on startup, stop on shutdown."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            uvicorn_signals_chain()
            await start()
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await stop()
            await send({"type": "lifespan.shutdown.complete"})
            return
