"""Every use of another library's private parts or workaround of its defect, each named with what it relies on and why.

Each has a contract test (tests/test_server_hooks.py for the server hooks, tests/test_compat.py
for the rest) that fails when an upgrade changes what it relies on, or makes it unnecessary.
"""

import asyncio
import functools
import sys
from typing import Any

# --- Server hooks: daphne's Twisted reactor, uvicorn's signal handlers ------------------------
# daphne offers no hook to run code when its reactor starts or before it shuts down, and
# uvicorn none to run code before it closes every WebSocket with 1012 on SIGTERM.


def daphne_reactor() -> Any | None:
    """The Twisted reactor daphne installed in this process, or None when there is none.

    Relies on: daphne installs `twisted.internet.asyncioreactor.AsyncioSelectorReactor` as
    `twisted.internet.reactor` (in `sys.modules`) before it imports the ASGI application.
    Importing the reactor here instead would install the default one: only a reactor
    daphne made is hooked.
    """
    reactor = sys.modules.get("twisted.internet.reactor")
    if reactor is None:
        return None
    from twisted.internet import asyncioreactor

    return reactor if isinstance(reactor, asyncioreactor.AsyncioSelectorReactor) else None


def uvicorn_signal_handler(handler: Any) -> bool:
    """Whether a signal handler is uvicorn's own.

    Relies on: uvicorn's server installs its SIGINT and SIGTERM handlers with
    `signal.signal`, as bound methods of `uvicorn.server.Server` (so their `__module__`
    starts with "uvicorn."), before the lifespan starts.
    """
    return callable(handler) and getattr(handler, "__module__", "").startswith("uvicorn.")


# --- redis-py: a cancellation that asyncio.wait_for drops ---------------------------------
#
# redis-py's asyncio `Connection.send_packed_command` writes each command inside
# `asyncio.wait_for(write, socket_timeout)` (every command: redis-py 8 defaults the timeout
# to 5 s). Before Python 3.12, `wait_for` drops a cancellation that arrives in the loop
# iteration where the write has just completed (CPython gh-86296, fixed in 3.12 by
# rewriting `wait_for` on `asyncio.timeout`): the caller carries on as if it had never been
# cancelled. channels-redis's `receive` then blocks in BZPOPMIN again, every 5 s, forever,
# and Channels' consumer, which awaits its cancelled receive on the way out, never ends.
# The task still says it was cancelled (`Task.cancelling()` stays raised, nobody called
# `uncancel()`), so a write that returns with more cancellations requested than when it
# began was cancelled: end it the way a cancellation would have, connection included,
# since the command's reply will never be read.


class _CancellationKept:
    """A redis-py connection whose commands end with a cancellation `wait_for` dropped while writing."""

    async def send_packed_command(self, command, check_health: bool = True) -> None:
        task = asyncio.current_task()
        requested = task.cancelling() if task is not None else 0
        await super().send_packed_command(command, check_health)  # type: ignore[misc]
        if task is not None and task.cancelling() > requested:
            await self.disconnect(nowait=True)  # type: ignore[attr-defined]
            raise asyncio.CancelledError


@functools.cache
def redis_connection_keeping_cancellation(connection_class: type) -> type:
    """`connection_class` (a redis-py asyncio connection class), cancellable while it writes a command."""
    return type(connection_class.__name__, (_CancellationKept, connection_class), {})
