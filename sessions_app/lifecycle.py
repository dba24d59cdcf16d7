"""The server process's life: register at start, heartbeat and reap while running, retire on stop.

    start     register this instance, reap this host's dead predecessors, start the heartbeat
    running   every WSS_HEARTBEAT_SECONDS: refresh the heartbeat; reap instances silent for
              longer than WSS_INSTANCE_TIMEOUT_SECONDS (any live process reaps any dead
              one, once its own heartbeats have held for that long); remove detached
              sessions whose WSS_RESUME_GRACE_SECONDS ran out (`expired`); reconcile this
              instance's rows with the sessions its connections hold
    lease     a heartbeat older than the timeout minus one heartbeat means peers may reap
              this instance any moment: it closes its sessions with `session_lost` (4503)
              itself and refuses new ones until a heartbeat succeeds again
    stop      refuse new connections, send `server_shutting_down` + close 4503 to every
              connection still open, delete this instance and its v1 sessions, detach its
              resumable ones (a client resumes them on another process)

Hooks: under daphne, Twisted's reactor (`callWhenRunning`, and a "before shutdown" trigger
that daphne waits for); under uvicorn and other ASGI servers, the ASGI lifespan protocol
(`lifespan_app`), and under uvicorn its signal handlers too, so the stop runs before
uvicorn closes the sockets (`uvicorn_signals_chain`). Registry calls run on one dedicated
thread with its own connection, so the heartbeat never waits behind the consumers' writes;
each is bounded by WSS_REGISTRY_TIMEOUT_SECONDS, and a call that overruns leaves its thread
behind (a daemon: it never holds up the exit) while the next call gets a fresh one.
"""

import asyncio
import concurrent.futures
import contextlib
import logging
import queue
import signal
import sys
import threading
import time
import uuid
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from django.db import DatabaseError, close_old_connections, connections

from . import activity, events, services
from .conf import app_settings
from .errors import ProtocolError, ServerShuttingDown, SessionLost

logger = logging.getLogger(__name__)

T = TypeVar("T")

# How long a stop waits for the clients' close handshakes before letting the server exit.
CLOSE_HANDSHAKE_SECONDS = 2.0


class Connection(Protocol):
    """What the lifecycle needs of a consumer: its session, and rendering an error frame."""

    session: services.SessionRecord | None
    channel_name: str

    async def send_error(self, error: ProtocolError) -> None: ...

    async def session_taken_over(self, event: dict[str, Any]) -> None: ...


_connections: "weakref.WeakSet[Any]" = weakref.WeakSet()
_executor: "_DaemonExecutor | None" = None
_heartbeat: asyncio.Task | None = None
_stopping = False
_predecessors_reaped = False
# time.monotonic() at which the current run of good heartbeats began (None: the last one failed).
_beats_good_since: float | None = None
_lease_timer: asyncio.TimerHandle | None = None
_fencing: asyncio.Task | None = None  # kept: the loop holds only weak references to tasks


def connection_opened(connection: Connection) -> None:
    """Track an accepted connection so a stop can close it."""
    _connections.add(connection)


def connection_closed(connection: Connection) -> None:
    """Forget a connection; forgetting an unknown one is fine."""
    _connections.discard(connection)


def sessions_held() -> dict[uuid.UUID, Connection]:
    """The sessions this process's connections hold right now, by id: the truth the registry must match."""
    return {c.session.session_id: c for c in list(_connections) if c.session is not None}


def stopping() -> bool:
    """Whether this process has begun to stop: new connections are refused."""
    return _stopping


class _DaemonExecutor(concurrent.futures.Executor):
    """One daemon thread running calls in order: a call stuck in the database never holds up the exit.

    (ThreadPoolExecutor's threads are joined at interpreter exit.)
    """

    def __init__(self, name: str) -> None:
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._run, name=name, daemon=True).start()

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> "concurrent.futures.Future[T]":
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._calls.put((future, fn, args, kwargs))
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._calls.put(None)

    def _run(self) -> None:
        while (item := self._calls.get()) is not None:
            future, fn, args, kwargs = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as error:
                future.set_exception(error)
        connections.close_all()


async def registry_call(function: Callable[[], T], *, timeout: float | None = None) -> T:
    """Run a registry function on the lifecycle thread (its own database connection).

    Waits at most `timeout` seconds (WSS_REGISTRY_TIMEOUT_SECONDS by default), then raises
    TimeoutError; the stuck thread is left to finish alone and the next call gets a new one.
    """
    global _executor
    if _executor is None:
        _executor = _DaemonExecutor("wss-lifecycle")
    executor = _executor

    def call() -> T:
        close_old_connections()
        try:
            return function()
        finally:
            close_old_connections()

    future = asyncio.get_running_loop().run_in_executor(executor, call)
    try:
        return await asyncio.wait_for(future, services.registry_timeout() if timeout is None else timeout)
    except TimeoutError:
        if _executor is executor:
            _executor = None
        executor.shutdown(wait=False)  # the thread ends (closing its connection) once its call returns
        raise


async def executor_close() -> None:
    """Close the lifecycle thread's database connection and the thread itself."""
    global _executor
    if _executor is None:
        return
    executor, _executor = _executor, None
    with contextlib.suppress(Exception):
        await asyncio.wait_for(
            asyncio.get_running_loop().run_in_executor(executor, connections.close_all), services.registry_timeout()
        )
    executor.shutdown(wait=False)


async def start() -> None:
    """Register this instance, reap this host's dead predecessors, start the heartbeat. Never raises."""
    global _heartbeat
    if _heartbeat is not None:
        return
    # While this first registration runs (daphne already accepts connections), a session
    # insert registers the instance itself, so new sessions need not be refused; only a
    # process that could not register refuses them until a heartbeat shows it alive.
    registered = False
    try:
        await beat(services.instance_register_sync)
        registered = True
        await predecessors_reap()
    except (DatabaseError, TimeoutError) as error:
        if not registered:
            services.instance_lease_expire()
        # A registry down at start must not stop the server: the heartbeat retries.
        logger.warning("registry work at start failed (%s); the heartbeat will retry", _describe(error))
    except Exception:
        if not registered:
            services.instance_lease_expire()
        logger.exception("registry work at start failed; the heartbeat will retry")
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
    """Every WSS_HEARTBEAT_SECONDS: one `heartbeat()`."""
    while True:
        await asyncio.sleep(app_settings.WSS_HEARTBEAT_SECONDS)
        await heartbeat()


async def heartbeat() -> None:
    """Refresh this instance's heartbeat, reap dead instances, reconcile this instance's rows. Never raises."""
    try:
        await beat(services.instance_heartbeat_sync)
    except Exception as error:
        logger.warning("heartbeat failed (%s); retrying in %g s", _describe(error), app_settings.WSS_HEARTBEAT_SECONDS)
        return
    try:
        await predecessors_reap()  # in case the registry was down at start
        if reaping_allowed():
            events.sessions_reaped(await registry_call(services.sessions_reap_sync))
    except Exception as error:
        logger.warning("reaping failed (%s); retrying in %g s", _describe(error), app_settings.WSS_HEARTBEAT_SECONDS)
    try:
        # Not held back by the reaper rule: a detach time is the registry's own clock, so the
        # grace is the same whoever counts it, and the bound (grace + one heartbeat) holds
        # even for a process that has only just started.
        events.sessions_expired(await registry_call(services.sessions_expire_sync))
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


async def beat(function: Callable[[], Any]) -> None:
    """Run a heartbeat (or the registration) and, if it succeeded, renew the lease from its start."""
    global _beats_good_since
    started = time.monotonic()
    try:
        await registry_call(function)
    except BaseException:
        _beats_good_since = None
        raise
    if _beats_good_since is None or services.instance_fenced():
        _beats_good_since = started  # a lapsed lease breaks the run, even without a failure
    lease_renew(started)


def lease_renew(started: float) -> None:
    """Hold the lease until the instance timeout minus one heartbeat after `started`, then fence."""
    global _lease_timer
    until = started + app_settings.WSS_INSTANCE_TIMEOUT_SECONDS - app_settings.WSS_HEARTBEAT_SECONDS
    services.instance_lease_renew(until)
    if _lease_timer is not None:
        _lease_timer.cancel()
    loop = asyncio.get_running_loop()
    _lease_timer = loop.call_at(loop.time() + (until - time.monotonic()), _lease_expired)


def _lease_expired() -> None:
    global _fencing
    if services.instance_fenced() and not _stopping:
        _fencing = asyncio.ensure_future(sessions_fence())


def reaping_allowed() -> bool:
    """Whether this process may reap peers: its own heartbeats have held for a whole instance timeout.

    After an outage every process shared, each one's heartbeat is stale; the first to
    recover would otherwise reap all the others, alive as they are.
    """
    return (
        _beats_good_since is not None
        and time.monotonic() - _beats_good_since >= app_settings.WSS_INSTANCE_TIMEOUT_SECONDS
    )


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


async def reconcile() -> services.Reconciliation:
    """Make this instance's rows equal the sessions it holds; close held sessions whose rows are gone.

    A missing row means the registry's authority (a reaper, an operator) ended the
    session: it is closed with `session_lost` (4503), never recorded again. A resumable
    session whose row now names another connection was resumed there and the notice did
    not arrive: it is closed with `session_taken_over` (4409), as the notice would have.
    """
    held = sessions_held()
    result = await services.sessions_reconcile(held={pk: c.channel_name for pk, c in held.items()})
    for session_id in result.lost | result.moved:
        connection = held[session_id]
        if connection.session is None or connection.session.session_id != session_id:
            continue
        with contextlib.suppress(Exception):
            if session_id in result.moved:
                # What the consumer does when the notice arrives: let go without a write, 4409.
                await connection.session_taken_over({"session_id": str(session_id)})
            else:
                await connection.send_error(SessionLost("This session was lost by the registry; reconnect."))
    if result.removed or result.detached or result.lost or result.moved:
        logger.warning(
            "reconciled the registry: removed %d and detached %d row(s) no connection held, closed %d session(s)"
            " whose rows were gone and %d resumed elsewhere",
            result.removed,
            result.detached,
            len(result.lost),
            len(result.moved),
        )
    return result


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
    lease_end()
    connections = list(_connections)
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
        removed = await registry_call(services.instance_retire_sync, timeout=timeout)
    except TimeoutError:
        logger.error("the registry did not answer within %g s; peers will reap this instance", timeout)
    except Exception:
        logger.exception("could not remove this instance's sessions; peers will reap them")
    await closes_wait(CLOSE_HANDSHAKE_SECONDS)
    with contextlib.suppress(Exception):  # after the closes, so their ends count; it says "stopped", not reaped
        await activity_write(stopped=True)
    await executor_close()
    logger.info("stopped: closed %d connection(s), removed %d session row(s)", len(connections), removed)
    return removed


def lease_end() -> None:
    """Keep no lease any more (the process is stopping): nothing will fence it."""
    global _lease_timer
    if _lease_timer is not None:
        _lease_timer.cancel()
        _lease_timer = None
    services.instance_lease_renew(None)


async def closes_wait(timeout: float) -> None:
    """Give the clients' close handshakes up to `timeout` seconds, so they see our close frame."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while _connections and loop.time() < deadline:
        await asyncio.sleep(0.05)


async def process_reset() -> None:
    """Forget every start and stop, as if this process had just booted: for tests only.

    Cancels the heartbeat, closes the lifecycle thread and its connection, forgets the
    tracked connections, and gives the process a fresh registry identity
    (`services.process_reset`). A server never calls it.
    """
    global _heartbeat, _stopping, _predecessors_reaped, _beats_good_since, _fencing
    if _heartbeat is not None:
        _heartbeat.cancel()
        _heartbeat = None
    lease_end()
    await executor_close()
    _connections.clear()
    _stopping = _predecessors_reaped = False
    _beats_good_since = _fencing = None
    services.process_reset()


# --- Server hooks ---------------------------------------------------------------------------


def daphne_install() -> bool:
    """Hook start and stop into daphne's Twisted reactor, if this process runs one.

    Called when the ASGI module is imported: daphne imports it before it starts its
    reactor and before it registers its own "before shutdown" trigger, so ours runs first
    and daphne's reactor waits for it. Returns whether the hooks were installed.
    """
    reactor = sys.modules.get("twisted.internet.reactor")
    if reactor is None:
        # Importing the reactor here would install the wrong one: only hook one daphne made.
        return False
    from twisted.internet import asyncioreactor, defer

    if not isinstance(reactor, asyncioreactor.AsyncioSelectorReactor):
        return False

    # The reactor's loop is the process's current asyncio loop: daphne sets it before it runs
    # the reactor, and "when running" callbacks fire just before the loop itself starts.
    def start_soon() -> Awaitable:
        return defer.Deferred.fromFuture(asyncio.ensure_future(start(), loop=asyncio.get_event_loop()))

    def stop_before_shutdown() -> Awaitable:
        return defer.Deferred.fromFuture(asyncio.ensure_future(stop(), loop=asyncio.get_event_loop()))

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
