"""Server hooks: how daphne, uvicorn and other ASGI servers run the lifecycle's start and stop.

Under daphne, Twisted's reactor (`callWhenRunning`, and a "before shutdown" trigger that
daphne waits for); under uvicorn and other ASGI servers, the ASGI lifespan protocol
(`lifespan_app`), and under uvicorn its signal handlers too, so the stop runs before
uvicorn closes the sockets (`uvicorn_signals_chain`).
"""

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable
from typing import Any

from . import compat
from .connections import CLOSE_HANDSHAKE_SECONDS, stopping
from .heartbeat import start, stop


def daphne_install() -> bool:
    """Hook start and stop into daphne's Twisted reactor, if this process runs one.

    Called when the ASGI module is imported: daphne imports it before it starts its
    reactor and before it registers its own "before shutdown" trigger, so ours runs first
    and daphne's reactor waits for it. Returns whether the hooks were installed.
    """
    reactor = compat.daphne_reactor()
    if reactor is None:
        return False
    compat.autobahn_debug_formatting_deferred()
    # autobahn's timeout fires up to a second early (compat.py): a client has from one
    # second to CLOSE_HANDSHAKE_SECONDS to answer a close, and the close frame leaves first.
    compat.daphne_close_handshake_timeout(CLOSE_HANDSHAKE_SECONDS)
    compat.daphne_kill_skips_ended_applications()
    twisted_problems_logged()
    from twisted.internet import defer

    # The reactor's loop is the process's current asyncio loop: daphne sets it before it runs
    # the reactor, and "when running" callbacks fire just before the loop itself starts.
    def start_soon() -> Awaitable:
        return defer.Deferred.fromFuture(asyncio.ensure_future(start(), loop=asyncio.get_event_loop()))

    def stop_before_shutdown() -> Awaitable:
        return defer.Deferred.fromFuture(asyncio.ensure_future(stop(), loop=asyncio.get_event_loop()))

    reactor.callWhenRunning(start_soon)
    reactor.addSystemEventTrigger("before", "shutdown", stop_before_shutdown)
    return True


# Twisted's log levels that reach the `twisted` logger, and the level each is logged at.
TWISTED_LEVELS_LOGGED = {"warn": logging.WARNING, "error": logging.ERROR, "critical": logging.CRITICAL}


def twisted_problems_logged() -> None:
    """Send Twisted's warnings and errors (autobahn's dropped connections, exceptions in protocols) to logging.

    daphne discards Twisted's whole log unless it runs with `-v 2`, which turns on every
    debug line too: a connection that Twisted or autobahn dropped would leave no trace.
    """
    from twisted.logger import formatEvent, globalLogPublisher

    logger = logging.getLogger("twisted")

    def observe(event: dict[str, Any]) -> None:
        level = event.get("log_level")
        failure = event.get("log_failure")
        logged_at = TWISTED_LEVELS_LOGGED.get(getattr(level, "name", ""))
        if logged_at is None and failure is None:
            return
        exc_info = (failure.type, failure.value, failure.getTracebackObject()) if failure is not None else None
        logger.log(logged_at or logging.ERROR, "%s", formatEvent(event), exc_info=exc_info)

    globalLogPublisher.addObserver(observe)


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
        if not compat.uvicorn_signal_handler(previous):
            continue

        def on_signal(number: int, frame: Any, previous: Callable = previous) -> None:
            if stopping():
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
