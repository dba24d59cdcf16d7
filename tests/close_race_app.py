"""An ASGI app that sends a close in the reactor turn where autobahn's close handshake timer fires.

Run under daphne by tests/test_compat.py. At each connection's first frame it waits until
just before a whole second, makes a Twisted timer due, then in the next turn (ahead of
that timer) answers as the consumer answers a bad frame (an `invalid_json` error frame,
then a close with 4400), and stays busy until the second has passed.
The timer's turn then runs every autobahn timeout due by that second. Whether the client
gets the frames depends on whether the close handshake timeout is among them.

WITH_PROJECT_TIMEOUT=1 applies the project's setting (sessions_app.server_hooks) first.
"""

import asyncio
import os
import time

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "wssproject.settings")

from sessions_app import compat, protocol
from sessions_app.connections import CLOSE_HANDSHAKE_SECONDS
from sessions_app.errors import InvalidJson

if os.environ.get("WITH_PROJECT_TIMEOUT") == "1":
    compat.daphne_close_handshake_timeout(CLOSE_HANDSHAKE_SECONDS)

# How close to the end of a second the close is sent, and how long after it the turn ends.
BEFORE_THE_SECOND = 0.010
AFTER_THE_SECOND = 0.010

ERROR = InvalidJson("The frame is not JSON.")


def busy_until(moment: float) -> None:
    """Hold the event loop (as a busy turn does) until the wall clock reads `moment`."""
    while time.time() < moment:
        pass


async def just_before_a_second_ends() -> float:
    """Return BEFORE_THE_SECOND before a whole second (a sleep that overran tries the next one); that second."""
    while True:
        second_end = int(time.time()) + 1.0
        await asyncio.sleep(max(0.0, second_end - 2 * BEFORE_THE_SECOND - time.time()))
        if time.time() < second_end - BEFORE_THE_SECOND:
            busy_until(second_end - BEFORE_THE_SECOND)
            return second_end


async def twisted_timers_due_after_this_step(reactor) -> None:
    """Return in a turn whose ready callbacks run Twisted's due timers after this task's step.

    A Twisted timer made due now runs in the next turn, after the steps queued before it,
    unless Twisted's timer handle was already queued in this turn: then it runs first, and
    we try again.
    """
    while True:
        ran = []
        reactor.callLater(0, ran.append, True)
        await asyncio.sleep(0)
        if not ran:
            return


async def application(scope: dict, receive, send) -> None:
    from twisted.internet import reactor

    if scope["type"] != "websocket":
        return
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    await receive()  # the client's frame
    second_end = await just_before_a_second_ends()
    await twisted_timers_due_after_this_step(reactor)
    await send({"type": "websocket.send", "text": protocol.encode(protocol.error_reply(ERROR))})
    await send({"type": "websocket.close", "code": ERROR.close_code})
    busy_until(second_end + AFTER_THE_SECOND)
    while (await receive())["type"] != "websocket.disconnect":
        pass
