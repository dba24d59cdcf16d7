"""Prometheus instruments, per process, and the small functions that record into them.

Callers use the functions, never the instruments, so a label set stays in one place:
`session_created(seconds)`, `session_ended(reason)`, `sessions_reaped(count)`,
`session_detached(reason)`, `session_resumed()`, `session_taken_over()`,
`sessions_expired(count)`, `protocol_error(code)`, `handshake_refused(reason)`,
`channel_layer_failed(operation)`.
`GET /metrics` renders them.
"""

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

# The *_created series only double the output; rates need none of them.
disable_created_metrics()

# Why a session ended. `drop` includes ping timeouts under daphne, which reports a missed
# pong as 1006 like any TCP drop; servers that close with 1011 on a keepalive timeout
# (uvicorn's websockets) are counted as `ping_timeout`.
END_REASONS = (
    "client_close",
    "drop",
    "ping_timeout",
    "protocol_error",
    "terminated",
    "reaped",
    "shutdown",
    "lost",
    "server_error",
    "expired",  # a detached resumable session whose grace ran out
)
# The rate limit refuses frames on open connections (counted in wss_protocol_errors_total as
# `rate_limited` and `rate_limit_exceeded`), never a handshake: per-address connection
# limits belong to the proxy.
REFUSAL_REASONS = ("origin", "auth")
# Channel-layer calls that Redis failed: a consumer's receive, the outage probe, a send
# (a terminate).
LAYER_OPERATIONS = ("receive", "probe", "send")

LIVE_SESSIONS = Gauge("wss_live_sessions", "Sessions held open by this process right now.")
SESSIONS_CREATED = Counter("wss_sessions_created", "Sessions opened by this process.")
SESSIONS_ENDED = Counter("wss_sessions_ended", "Sessions ended, by reason.", ["reason"])
PROTOCOL_ERRORS = Counter("wss_protocol_errors", "Error frames sent, by protocol error code.", ["code"])
SESSIONS_DETACHED = Counter(
    "wss_sessions_detached", "Resumable sessions whose connection ended without ending them, by reason.", ["reason"]
)
SESSIONS_RESUMED = Counter("wss_sessions_resumed", "Sessions reattached to a connection of this process.")
SESSIONS_TAKEN_OVER = Counter(
    "wss_sessions_taken_over", "Sessions held here that were resumed on another connection (4409 sent)."
)
HANDSHAKE_REFUSALS = Counter("wss_handshake_refusals", "WebSocket handshakes refused, by reason.", ["reason"])
LAYER_CALLS_FAILED = Counter(
    "wss_channel_layer_failures", "Channel-layer calls that failed because Redis did, by operation.", ["operation"]
)
LAYER_OUTAGES = Counter("wss_channel_layer_outages", "Times this process found the channel layer down.")
LAYER_UP = Gauge("wss_channel_layer_up", "1 while this process reaches the channel layer, 0 during an outage.")
ADMIN_PAGES = Gauge("wss_admin_live_pages", "Admin pages following the registry over this process's live channel.")
ADMIN_FRAMES = Counter("wss_admin_live_frames", "Updates sent to watching admin pages.")
REGISTRY_NUDGES = Counter("wss_registry_nudges", "Registry-changed nudges this process published to the admin pages.")
LAYER_UP.set(1)
NEW_SESSION_SECONDS = Histogram(
    "wss_new_session_seconds",
    "Time from a new_session frame to its success reply being sent.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)

# Export every label at zero from the start, so rates and alerts see the series.
for _reason in END_REASONS:
    SESSIONS_ENDED.labels(reason=_reason)
    SESSIONS_DETACHED.labels(reason=_reason)
for _reason in REFUSAL_REASONS:
    HANDSHAKE_REFUSALS.labels(reason=_reason)
for _operation in LAYER_OPERATIONS:
    LAYER_CALLS_FAILED.labels(operation=_operation)


def session_created(seconds: float) -> None:
    """A session opened here, `seconds` after its new_session frame arrived."""
    SESSIONS_CREATED.inc()
    LIVE_SESSIONS.inc()
    NEW_SESSION_SECONDS.observe(seconds)


def session_ended(reason: str) -> None:
    """A session held by this process ended."""
    SESSIONS_ENDED.labels(reason=reason).inc()
    LIVE_SESSIONS.dec()


def sessions_reaped(count: int) -> None:
    """The reaper removed `count` rows of dead instances (not held here: the gauge stays)."""
    SESSIONS_ENDED.labels(reason="reaped").inc(count)


def session_detached(reason: str) -> None:
    """A resumable session held here lost its connection and waits for a resume."""
    SESSIONS_DETACHED.labels(reason=reason).inc()
    LIVE_SESSIONS.dec()


def session_resumed() -> None:
    """A session was reattached to a connection of this process."""
    SESSIONS_RESUMED.inc()
    LIVE_SESSIONS.inc()


def session_taken_over() -> None:
    """A session held here moved to another connection."""
    SESSIONS_TAKEN_OVER.inc()
    LIVE_SESSIONS.dec()


def sessions_expired(count: int) -> None:
    """`count` detached sessions expired (held by no process: the gauge stays)."""
    SESSIONS_ENDED.labels(reason="expired").inc(count)


def protocol_error(code: str) -> None:
    """An error frame with this code was sent."""
    PROTOCOL_ERRORS.labels(code=code).inc()


def handshake_refused(reason: str) -> None:
    """A handshake was refused: `origin` or `auth` (REFUSAL_REASONS)."""
    HANDSHAKE_REFUSALS.labels(reason=reason).inc()


def channel_layer_failed(operation: str) -> None:
    """Redis failed a channel-layer call: `receive`, `probe` or `send`."""
    LAYER_CALLS_FAILED.labels(operation=operation).inc()


def channel_layer_down() -> None:
    """An outage of the channel layer began (its first failure)."""
    LAYER_OUTAGES.inc()
    LAYER_UP.set(0)


def channel_layer_up() -> None:
    """The channel layer answers again."""
    LAYER_UP.set(1)


def admin_page_watching(delta: int) -> None:
    """An admin page started (+1) or stopped (-1) following the registry here."""
    ADMIN_PAGES.inc(delta)


def admin_frame_sent() -> None:
    """An update went to a watching admin page."""
    ADMIN_FRAMES.inc()


def registry_nudged() -> None:
    """This process told the admin pages that the registry changed."""
    REGISTRY_NUDGES.inc()


def exposition() -> tuple[bytes, str]:
    """The Prometheus text format of this process's metrics, and its content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
