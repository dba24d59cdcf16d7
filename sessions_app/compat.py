"""Every use of another library's private parts, each named with what it relies on and why.

Each has a contract test (tests/test_server_hooks.py for the server hooks) that fails when
an upgrade changes what it relies on.
"""

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
