"""Every error the wire protocol reports, as data.

    ProtocolError                    root; `code` goes on the wire, `close_code` decides the fate
    ├── InvalidJson         4400     frame is not JSON, or not a JSON object
    ├── UnknownType         4400     `type` missing, not a string, or not known
    ├── UnsupportedFrame    4415     a binary frame
    ├── MessageTooLarge     4413     a frame over WSS_MAX_MESSAGE_BYTES
    ├── InvalidRequest      open     a known type with bad fields
    ├── WorkspaceNotFound   open     the path does not exist or is not a directory
    ├── WorkspaceForbidden  open     the path resolves outside WSS_WORKSPACE_ROOTS
    ├── SessionExists       open     this connection already holds a live session
    ├── SessionNotFound     open     no resumable session with this id and token (one message for every cause)
    ├── NoSession           open     `end_session` on a connection that holds no session
    ├── Unavailable         open     the registry could not record the session, or the path did not resolve in time
    ├── InternalError       open     a bug on our side; logged with its traceback
    ├── SessionTerminated   4410     an operator ended the session (server-initiated)
    ├── ServerShuttingDown  4503     this server process is stopping; reconnect (server-initiated)
    ├── SessionLost         4503     the registry lost this session (its server was presumed dead); reconnect
    ├── SessionTakenOver    4409     the session was resumed on another connection (server-initiated)
    ├── RateLimited         open     a frame over WSS_RATE_LIMIT, dropped unread
    └── RateLimitExceeded   4429     the client kept sending while rate limited

Errors are raised in the pure core and rendered in exactly one place, the consumer.
A `close_code` of None keeps the socket open.
"""

from typing import ClassVar

RequestId = str | int


class ProtocolError(Exception):
    """Root of every error the wire protocol reports."""

    code: ClassVar[str] = "invalid_request"
    close_code: ClassVar[int | None] = None

    def __init__(self, message: str, *, request_id: RequestId | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.request_id = request_id


class InvalidJson(ProtocolError):
    code, close_code = "invalid_json", 4400


class UnknownType(ProtocolError):
    code, close_code = "unknown_type", 4400


class UnsupportedFrame(ProtocolError):
    code, close_code = "unsupported_frame", 4415


class MessageTooLarge(ProtocolError):
    code, close_code = "message_too_large", 4413


class InvalidRequest(ProtocolError):
    code = "invalid_request"


class WorkspaceNotFound(ProtocolError):
    code = "workspace_not_found"


class WorkspaceForbidden(ProtocolError):
    code = "workspace_forbidden"


class SessionExists(ProtocolError):
    code = "session_exists"


class SessionNotFound(ProtocolError):
    code = "session_not_found"


class NoSession(ProtocolError):
    code = "no_session"


class Unavailable(ProtocolError):
    code = "unavailable"


class InternalError(ProtocolError):
    code = "internal_error"


class SessionTerminated(ProtocolError):
    code, close_code = "session_terminated", 4410


class ServerShuttingDown(ProtocolError):
    code, close_code = "server_shutting_down", 4503


class SessionLost(ProtocolError):
    code, close_code = "session_lost", 4503


class SessionTakenOver(ProtocolError):
    code, close_code = "session_taken_over", 4409


class RateLimited(ProtocolError):
    code = "rate_limited"


class RateLimitExceeded(ProtocolError):
    code, close_code = "rate_limit_exceeded", 4429


def all_error_classes() -> list[type[ProtocolError]]:
    """Every concrete error class, for the schema check and the docs."""
    found: list[type[ProtocolError]] = []
    pending = [ProtocolError]
    while pending:
        cls = pending.pop()
        for sub in cls.__subclasses__():
            found.append(sub)
            pending.append(sub)
    return found
