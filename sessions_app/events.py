"""Connection and session lifecycle events: each is one log line and its metrics.

Lines go to the `sessions_app.events` logger. Each carries `event`, `instance` (this
process's boot id) and, where known, `session_id`, `client`, `reason`, `duration_seconds`:
as `key=value` pairs in the plain format, as fields of the JSON line when
WSS_LOG_FORMAT=json.
"""

import json
import logging
import re
import time
from typing import Any

from django.utils import timezone

from . import activity, live, metrics
from .process import process_state
from .sessions import SessionRecord

logger = logging.getLogger("sessions_app.events")

# A close the server started, keyed by the error code it sent first; any other is a protocol error.
END_REASON_BY_ERROR_CODE = {
    "session_terminated": "terminated",
    "server_shutting_down": "shutdown",
    "session_lost": "lost",  # a peer reaped the row and counted it as reaped; the socket ends here
    "internal_error": "server_error",  # the connection died of an exception (e.g. the channel layer failed)
}


def connected(scope: dict[str, Any]) -> None:
    """A WebSocket handshake was accepted."""
    _emit("connect", client=client_address(scope), path=scope.get("path"))


def handshake_refused(scope: dict[str, Any], *, reason: str, detail: str) -> None:
    """A handshake was refused (`origin` or `auth`: metrics.REFUSAL_REASONS)."""
    metrics.handshake_refused(reason)
    _emit("refused", level=logging.WARNING, client=client_address(scope), reason=reason, detail=detail)


def session_created(scope: dict[str, Any], session: SessionRecord, *, started: float) -> None:
    """A session opened; `started` is the time.monotonic() at which its frame arrived."""
    metrics.session_created(time.monotonic() - started)
    registry_changed(opened=1)
    _emit(
        "session_created",
        session_id=session.session_id,
        client=client_address(scope),
        workspace_dir=session.workspace_dir,
    )


def session_ended(scope: dict[str, Any], session: SessionRecord, *, reason: str, close_code: int | None = None) -> None:
    """A session held by this process ended, for `reason` (one of metrics.END_REASONS)."""
    metrics.session_ended(reason)
    registry_changed(ended=1)
    duration = round((timezone.now() - session.created_at).total_seconds(), 3)
    _emit(
        "session_ended",
        session_id=session.session_id,
        client=client_address(scope),
        reason=reason,
        close_code=close_code,
        duration_seconds=duration,
    )


def session_terminate_requested(*, session_id: Any, actor: str, via: str, result: str) -> None:
    """Someone terminated a session (the audit line): `actor` a username or `operator:<login>`, `via` the
    entry point, `result` what it achieved (delivered, removed, not_delivered)."""
    if result == "removed":  # no consumer held it, so no other event will say it ended
        registry_changed(ended=1)
    _emit("session_terminate", session_id=session_id, actor=actor, via=via, result=str(result))


def session_event_sent(*, session_id: Any, actor: str, via: str, event: str, seq: int) -> None:
    """Someone sent a session an event (the audit line), through `via`; `seq` is the one it got."""
    _emit("session_event_sent", session_id=session_id, actor=actor, via=via, event_name=event, seq=seq)


def session_detached(scope: dict[str, Any], session: SessionRecord, *, reason: str, close_code: int | None) -> None:
    """A resumable session's connection ended without ending it: it waits for a resume."""
    metrics.session_detached(reason)
    registry_changed()
    _emit(
        "session_detached",
        session_id=session.session_id,
        client=client_address(scope),
        reason=reason,
        close_code=close_code,
    )


def session_resumed(scope: dict[str, Any], session: SessionRecord, *, taken_over: bool) -> None:
    """A session was reattached to this connection (`taken_over`: from a connection that still held it)."""
    metrics.session_resumed()
    registry_changed()
    _emit(
        "session_resumed",
        session_id=session.session_id,
        client=client_address(scope),
        taken_over=str(taken_over).lower(),
    )


def session_taken_over(scope: dict[str, Any], session: SessionRecord) -> None:
    """A session held here was resumed on another connection; this one is closed with 4409."""
    metrics.session_taken_over()
    _emit("session_taken_over", session_id=session.session_id, client=client_address(scope))


def sessions_expired(count: int) -> None:
    """Detached sessions whose grace ran out were removed."""
    if count:
        metrics.sessions_expired(count)
        registry_changed(ended=count)
        _emit("sessions_expired", count=count)


def sessions_reaped(count: int) -> None:
    """The reaper removed `count` sessions of dead instances."""
    if count:
        metrics.sessions_reaped(count)
        registry_changed(ended=count)
        _emit("sessions_reaped", count=count)


def error_sent(code: str) -> None:
    """An error frame with this code was sent."""
    metrics.protocol_error(code)


def registry_changed(*, opened: int = 0, ended: int = 0) -> None:
    """Sessions were added, removed or changed here: count them for the history and nudge the admin watchers."""
    if opened or ended:
        activity.sessions_counted(opened=opened, ended=ended)
    live.registry_changed()


def end_reason(close_code: int, *, closing_error: str | None) -> str:
    """Why a connection ended, from its disconnect code and the error the server closed with, if any."""
    if closing_error is not None:
        return END_REASON_BY_ERROR_CODE.get(closing_error, "protocol_error")
    if close_code == 1006:
        return "drop"
    if close_code == 1011:
        return "ping_timeout"
    return "client_close"


def client_address(scope: dict[str, Any]) -> str:
    """The peer as `host:port`, or empty when the server did not say."""
    client = scope.get("client")
    if not client:
        return ""
    host, port = client[0], client[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def _emit(event: str, *, level: int = logging.INFO, **fields: Any) -> None:
    if not logger.isEnabledFor(level):
        return  # three events per session: build nothing that no handler will write
    line = {"event": event}
    for key, value in fields.items():
        if value is not None:
            line[key] = value if isinstance(value, int | float | str) else str(value)
    line["instance"] = process_state().identity.boot_text
    # makeRecord, not logger.log: an event line knows its source, so no caller lookup. The
    # text is built by the log writer thread, when it formats the record (_Line).
    logger.handle(logger.makeRecord(logger.name, level, __file__, 0, _Line(line), (), None, func=event, extra=line))


class _Line:
    """The plain text of an event line, `event key=value ...`, built only when written."""

    __slots__ = ("fields",)

    def __init__(self, fields: dict[str, Any]) -> None:
        self.fields = fields

    def __str__(self) -> str:
        pairs = [f"{key}={_plain(value)}" for key, value in self.fields.items() if key != "event"]
        return f"{self.fields['event']} {' '.join(pairs)}"


_NEEDS_QUOTES = re.compile(r'[\s"=]')


def _plain(value: Any) -> str:
    if not isinstance(value, str):
        return str(value)  # numbers: never quoted
    text = value
    return json.dumps(text) if not text or _NEEDS_QUOTES.search(text) else text
