"""Server hooks: how daphne, uvicorn and other ASGI servers run the lifecycle's start and stop.

Under daphne, Twisted's reactor (`callWhenRunning`, and a "before shutdown" trigger that
daphne waits for); under uvicorn and other ASGI servers, the ASGI lifespan protocol
(`lifespan_app`), and under uvicorn its signal handlers too, so the stop runs before
uvicorn closes the sockets (`uvicorn_signals_chain`).
"""

import asyncio
import signal
from collections.abc import Awaitable, Callable
from typing import Any

from . import compat
from .connections import stopping
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
