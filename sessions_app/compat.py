"""Every use of another library's private parts, and every workaround of its defects, in one place.

Each section names the upstream code it relies on and why the public API does not do;
tests/test_compat.py (tests/test_server_hooks.py for the server hooks) has a contract test
per touchpoint that fails when an upgrade changes what it relies on, and a system check
(wss.W030) warns when an installed version differs from the one this module was checked
against. After an upgrade: run tests/test_compat.py,
re-check each section, then update CHECKED_VERSIONS (and requirements.txt).
"""

import asyncio
import functools
import hashlib
import importlib.metadata
import inspect
import pprint
import sys
import time
from collections.abc import Mapping
from typing import Any

from channels.consumer import get_handler_name
from channels.exceptions import StopConsumer

# --- Versions -----------------------------------------------------------------------------

# The distributions whose private parts this module uses, at the versions it was checked
# against (the pins of requirements.txt).
CHECKED_VERSIONS: dict[str, str] = {
    "channels": "4.3.2",
    "channels-redis": "4.3.0",
    "daphne": "4.2.3",
    "autobahn": "26.11.1",
    "txaio": "26.6.1",
    "uvicorn": "0.54.0",
    "djangorestframework": "3.18.3",
    "redis": "8.1.0",
}


def installed_version(distribution: str) -> str | None:
    """The installed version of `distribution`, or None when it is not installed."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def versions_differing() -> dict[str, tuple[str, str]]:
    """{distribution: (checked, installed)} for each installed one whose version is not the checked one."""
    found = {name: installed_version(name) for name in CHECKED_VERSIONS}
    return {
        name: (checked, found[name])
        for name, checked in CHECKED_VERSIONS.items()
        if found[name] is not None and found[name] != checked
    }


def source_digest(function: Any) -> str:
    """A short digest of a function's source: a contract test compares it with the one checked."""
    return hashlib.sha256(inspect.getsource(function).encode()).hexdigest()[:16]


# --- Channels' in-memory layer: `_clean_expired` ------------------------------------------
# channels.layers.InMemoryChannelLayer runs `_clean_expired` (a walk over every channel and
# group) on each `receive` and `group_send`. Every connection calls `receive` once when it
# opens, so holding N connections costs O(N^2). Expiry is measured in seconds (60 s by
# default), so walking at most once per `clean_interval` keeps it as correct as before.
# No public hook: the walk is called from `receive` itself.


class CleanExpiredAtMostEvery:
    """Mixin for Channels' InMemoryChannelLayer: `_clean_expired` at most once per `clean_interval` seconds."""

    clean_interval = 1.0
    _cleaned_at = 0.0

    def _clean_expired(self) -> None:
        now = time.monotonic()
        if now - self._cleaned_at < self.clean_interval:
            return
        self._cleaned_at = now
        super()._clean_expired()  # type: ignore[misc]


# --- channels-redis: `_clean_receive_backup` ------------------------------------------------
# channels_redis.core.RedisChannelLayer.receive_single starts `_clean_receive_backup` in a
# task nobody awaits. When Redis fails right after a read, that task dies with "Task
# exception was never retrieved". Nothing is lost (the message stays in the backup queue
# and is read again after the outage), so the failure is counted instead.


class ReceiveBackupFailuresCounted:
    """Mixin for channels-redis's core layer: a Redis failure in the receive-backup cleanup is handed to a hook."""

    backup_failures: tuple[type[BaseException], ...] = ()

    def receive_backup_failed(self, error: BaseException) -> None:
        """Called with the Redis failure that ended a receive-backup cleanup."""

    async def _clean_receive_backup(self, index: int, channel: str) -> None:
        try:
            await super()._clean_receive_backup(index, channel)  # type: ignore[misc]
        except self.backup_failures as error:
            self.receive_backup_failed(error)


# --- Channels' consumer: `dispatch` and `websocket_disconnect` ------------------------------
# Channels 4.3 calls `aclose_old_connections()` (a hop to the database thread) before every
# handler and again on disconnect. A consumer that reaches the database only through its
# own executors (and `database_sync_to_async`, which closes old connections itself) gains
# nothing from the hop and pays it per event: measured in docs/decisions.md. These are
# Channels' own methods (channels.consumer.AsyncConsumer.dispatch,
# channels.generic.websocket.AsyncWebsocketConsumer.websocket_disconnect) without the hop
# and, for the disconnect, without the group discards: the consumer joins no groups.

# The digests of the upstream methods these copies were made from.
CONSUMER_SOURCES_CHECKED = {
    "channels.consumer.AsyncConsumer.dispatch": "39f34e7d4fb0f655",
    "channels.generic.websocket.AsyncWebsocketConsumer.websocket_disconnect": "10f38aa55fd51ff5",
}


class WithoutConnectionHop:
    """Mixin for a Channels WebSocket consumer: Channels' dispatch and disconnect, without the database-thread hop."""

    async def dispatch(self, message: Mapping[str, Any]) -> None:
        """Call the handler for the message's type."""
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def websocket_disconnect(self, message: Mapping[str, Any]) -> None:
        """Call `disconnect` with the close code, then stop the consumer."""
        await self.disconnect(message["code"])  # type: ignore[attr-defined]
        raise StopConsumer()


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


# --- autobahn (daphne's WebSocket protocol): debug lines formatted before they are dropped ---
# `autobahn.websocket.protocol` passes formatted values to its debug log calls: at every
# connection a `pformat(...)` of every configuration attribute (`_connectionMade`), and on
# every frame sent and at every handshake, open and close `hltype(...)` / `hlval(...)`
# (colour codes through click). The logger drops the lines unless debug logging is on, but
# the arguments are built first (measured: 118 µs for the pformat, 4.7 µs per hltype). The module's
# three names are replaced by ones that format when a line is written, so a debug line
# reads the same when it is on. `pformat` has another caller in the module, which needs a
# `str`: only a call from `_connectionMade` is deferred.


class _FormattedWhenWritten:
    """`format(value)`, computed when the log line that holds it is written."""

    __slots__ = ("format", "value")

    def __init__(self, format: Any, value: Any) -> None:
        self.format, self.value = format, value

    def __str__(self) -> str:
        return self.format(self.value)

    def __format__(self, spec: str) -> str:  # the logger's "{name}"
        return format(str(self), spec)


def autobahn_debug_formatting_deferred() -> bool:
    """Make autobahn's protocol format its debug lines' values only when a line is written; whether it does.

    Relies on: `autobahn.websocket.protocol` imports `pformat`, `hltype` and `hlval` by
    name; `hltype` and `hlval` are called only for arguments of its log calls, and
    `pformat` in `WebSocketProtocol._connectionMade` only for one.
    """
    try:
        from autobahn import util
        from autobahn.websocket import protocol
    except ImportError:
        return False
    if getattr(protocol.pformat, "deferred", False):
        return True
    if (protocol.pformat, protocol.hltype, protocol.hlval) != (pprint.pformat, util.hltype, util.hlval):
        return False
    connection_made = protocol.WebSocketProtocol._connectionMade.__code__

    def pformat(value: Any) -> Any:
        if sys._getframe(1).f_code is connection_made:
            return _FormattedWhenWritten(pprint.pformat, value)
        return pprint.pformat(value)

    def hltype(value: Any) -> _FormattedWhenWritten:
        return _FormattedWhenWritten(util.hltype, value)

    def hlval(value: Any, *args: Any, **kwargs: Any) -> Any:
        if args or kwargs:  # not called so by the module today: formatted at once, as before
            return util.hlval(value, *args, **kwargs)
        return _FormattedWhenWritten(util.hlval, value)

    for replacement in (pformat, hltype, hlval):
        replacement.deferred = True  # type: ignore[attr-defined]
    protocol.pformat, protocol.hltype, protocol.hlval = pformat, hltype, hlval
    return True


# --- autobahn (daphne's WebSocket protocol): a close handshake timeout rounded down ------------
# autobahn starts its close handshake timeout (1 s by default; daphne does not set it) on
# txaio's batched timer, whose `call_later` rounds `now + delay` down to the whole second:
# a 1 s timeout fires anywhere from 0 to 1 s later. When it fires, autobahn aborts the
# TCP connection, and Twisted drops whatever the transport has not written yet. If the
# timer's second ends within the reactor turn that queued the close frame (a busy turn
# after a stall, or one near a second's end), the abort comes before the write: the
# client gets neither the error frame nor the close, only a reset. daphne gives no option
# for it; autobahn's factory takes `closeHandshakeTimeout`, and daphne makes its factory
# with `WebSocketFactory(...)`, whose `resetProtocolOptions` sets autobahn's defaults.


def daphne_close_handshake_timeout(seconds: float) -> bool:
    """Give daphne's WebSocket factory a close handshake timeout of `seconds`; whether it could.

    Relies on: daphne builds its factory from `daphne.ws_protocol.WebSocketFactory` after
    the ASGI application is imported, and autobahn's `WebSocketServerFactory.__init__`
    calls `resetProtocolOptions`, which sets `closeHandshakeTimeout`; daphne's own
    `setProtocolOptions` call leaves that option alone.
    """
    try:
        from daphne.ws_protocol import WebSocketFactory
    except ImportError:
        return False
    reset = WebSocketFactory.resetProtocolOptions
    if getattr(reset, "close_handshake_timeout", None) is not None:
        reset.close_handshake_timeout = seconds
        return True

    @functools.wraps(reset)
    def reset_with_timeout(factory: Any) -> None:
        reset(factory)
        factory.closeHandshakeTimeout = reset_with_timeout.close_handshake_timeout

    reset_with_timeout.close_handshake_timeout = seconds  # type: ignore[attr-defined]
    WebSocketFactory.resetProtocolOptions = reset_with_timeout  # type: ignore[method-assign]
    return True


# --- daphne: `Server.kill_all_applications` and a connection whose application has ended ---
# daphne's "before shutdown" trigger cancels every application, reading
# `details["application_instance"]` of every connection. Its `application_checker` deletes
# that key once an application ends while the connection stays open (an HTTP keep-alive
# connection after its response, a WebSocket whose consumer ended before the client's close
# reply). The trigger then raises KeyError, and the applications after that one are not
# cancelled nor waited for. The wrapper below hands it only the connections that still
# have an application (the others have nothing left to cancel).


def daphne_kill_skips_ended_applications() -> bool:
    """Make daphne's `Server.kill_all_applications` pass over connections whose application has ended; whether it could.

    Relies on: `daphne.server.Server` keeps `connections` ({protocol: details}) with the
    application's future under "application_instance" while it runs, and `run()` adds
    `self.kill_all_applications` as a "before shutdown" trigger after the ASGI
    application is imported.
    """
    try:
        from daphne.server import Server
    except ImportError:
        return False
    kill = Server.kill_all_applications
    if getattr(kill, "skips_ended_applications", False):
        return True

    @functools.wraps(kill)
    def kill_running_applications(server: Any) -> Any:
        connections = server.connections
        server.connections = {p: d for p, d in connections.items() if "application_instance" in d}
        try:
            return kill(server)
        finally:
            server.connections = connections

    kill_running_applications.skips_ended_applications = True  # type: ignore[attr-defined]
    Server.kill_all_applications = kill_running_applications  # type: ignore[method-assign]
    return True


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
