"""Wire protocol v1.1, pure: decode a frame into a message, build every reply.

Imports neither Channels nor the ORM, so it is tested without a database or event loop.
See docs/protocol.md for the prose and docs/asyncapi.yaml for the schema.
"""

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar, TypeVar
from uuid import UUID

from .errors import (
    InvalidJson,
    InvalidRequest,
    MessageTooLarge,
    ProtocolError,
    RequestId,
    UnknownType,
    UnsupportedFrame,
)

# Optional WebSocket subprotocol name; selected when the client offers it (browsers that
# offer subprotocols, e.g. to carry a token, fail the handshake unless one is selected).
SUBPROTOCOL = "wss-sessions.v1"
MAX_REQUEST_ID_CHARS = 128
# JSON numbers beyond 2**53 lose precision in JavaScript clients, so they cannot round-trip.
MAX_SAFE_INTEGER = 2**53 - 1
MAX_PATH_BYTES = 4096  # Linux PATH_MAX
MAX_COMPONENT_BYTES = 255  # Linux NAME_MAX
# Ours are 43 characters; the bound only keeps a hostile frame from being hashed at length.
MAX_RESUME_TOKEN_CHARS = 256


# Every client message type, by its wire `type`: filled by @message_type, read by decode().
MESSAGE_TYPES: dict[str, type["Message"]] = {}

M = TypeVar("M", bound=type["Message"])


def message_type(cls: M) -> M:
    """Register a message dataclass under its wire `type`: the one place a type is declared."""
    if cls.type in MESSAGE_TYPES:
        raise ValueError(f"message type {cls.type!r} is declared twice")
    MESSAGE_TYPES[cls.type] = cls
    return cls


class Message:
    """Base of the client messages: each carries its wire `type` and parses its own fields."""

    __slots__ = ()
    type: ClassVar[str]
    request_id: RequestId | None

    @classmethod
    def parse(cls, fields: Mapping[str, Any], request_id: RequestId | None) -> "Message":
        """Validate the fields of a decoded object of this type."""
        raise NotImplementedError


@message_type
@dataclass(frozen=True, slots=True)
class NewSession(Message):
    """`new_session`: open a session on a workspace directory, resumable if asked."""

    type: ClassVar[str] = "new_session"
    workspace_dir: str
    request_id: RequestId | None = None
    resumable: bool = False

    @classmethod
    def parse(cls, fields: Mapping[str, Any], request_id: RequestId | None) -> "NewSession":
        """Validate the fields of a decoded `new_session` object."""
        resumable = fields.get("resumable", False)
        if not isinstance(resumable, bool):
            raise InvalidRequest('"resumable" must be a JSON boolean (true or false).')
        return cls(
            workspace_dir=parse_workspace_dir(fields.get("workspace_dir")), request_id=request_id, resumable=resumable
        )


@message_type
@dataclass(frozen=True, slots=True)
class ResumeSession(Message):
    """`resume_session`: reattach a resumable session to this connection with its token."""

    type: ClassVar[str] = "resume_session"
    session_id: UUID
    resume_token: str
    request_id: RequestId | None = None

    @classmethod
    def parse(cls, fields: Mapping[str, Any], request_id: RequestId | None) -> "ResumeSession":
        """Validate the fields of a decoded `resume_session` object."""
        return cls(
            session_id=parse_session_id(fields.get("session_id")),
            resume_token=parse_resume_token(fields.get("resume_token")),
            request_id=request_id,
        )


@message_type
@dataclass(frozen=True, slots=True)
class EndSession(Message):
    """`end_session`: end this connection's session now; the connection stays open."""

    type: ClassVar[str] = "end_session"
    request_id: RequestId | None = None

    @classmethod
    def parse(cls, fields: Mapping[str, Any], request_id: RequestId | None) -> "EndSession":
        """`end_session` has no fields of its own."""
        return cls(request_id=request_id)


def subprotocol_choose(offered: list[str]) -> str | None:
    """The subprotocol to select from the client's offer: ours, or none."""
    return SUBPROTOCOL if SUBPROTOCOL in offered else None


def decode(text_data: str | None, bytes_data: bytes | None) -> Message:
    """Turn one WebSocket frame into a message, or raise the ProtocolError that answers it.

    Its size was checked as it arrived (frame_size_check, called by inbox.py).
    """
    if text_data is None:
        raise UnsupportedFrame("Binary frames are not supported: send JSON in a text frame.")
    obj = _load_object(text_data)
    request_id = _echoable_request_id(obj.get("request_id"))
    try:
        message_type = obj.get("type")
        if not isinstance(message_type, str):
            raise UnknownType('The message needs a "type" string, such as "new_session".')
        cls = MESSAGE_TYPES.get(message_type)
        if cls is None:
            known = ", ".join(sorted(MESSAGE_TYPES))
            raise UnknownType(f"Unknown message type {message_type[:64]!r}; known types: {known}.")
        return cls.parse(obj, parse_request_id(obj))
    except ProtocolError as error:
        error.request_id = request_id
        raise


def parse_request_id(fields: Mapping[str, Any]) -> RequestId | None:
    """Validate the optional `request_id`: a short string or a JSON-safe integer."""
    if "request_id" not in fields or fields["request_id"] is None:
        return None
    value = fields["request_id"]
    if _echoable_request_id(value) is None:
        raise InvalidRequest(
            f'"request_id" must be a string of at most {MAX_REQUEST_ID_CHARS} characters '
            f"or an integer between -{MAX_SAFE_INTEGER} and {MAX_SAFE_INTEGER}."
        )
    return value


def parse_workspace_dir(value: Any) -> str:
    """Check the shape of `workspace_dir`; the filesystem is consulted in workspaces.py."""
    if value is None:
        raise InvalidRequest('"workspace_dir" is required: an absolute directory path.')
    if not isinstance(value, str):
        raise InvalidRequest('"workspace_dir" must be a string: an absolute directory path.')
    if value == "":
        raise InvalidRequest('"workspace_dir" is empty: give an absolute directory path.')
    if "\x00" in value:
        raise InvalidRequest('"workspace_dir" contains a NUL character.')
    try:
        encoded = value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequest('"workspace_dir" is not valid Unicode (it has a lone surrogate).') from None
    if len(encoded) > MAX_PATH_BYTES:
        raise InvalidRequest(f'"workspace_dir" is longer than {MAX_PATH_BYTES} bytes.')
    if not value.startswith("/"):
        raise InvalidRequest(f'"workspace_dir" must be an absolute path starting with "/", not {value[:64]!r}.')
    if any(len(part) > MAX_COMPONENT_BYTES for part in encoded.split(b"/")):
        raise InvalidRequest(f'"workspace_dir" has a path component longer than {MAX_COMPONENT_BYTES} bytes.')
    return value


def parse_session_id(value: Any) -> UUID:
    """A `session_id`: a UUID in its canonical text form (any case)."""
    if not isinstance(value, str):
        raise InvalidRequest('"session_id" is required: the session\'s UUID as a string.')
    try:
        parsed = UUID(value)
    except ValueError:
        raise InvalidRequest('"session_id" is not a UUID.') from None
    if str(parsed) != value.lower():
        raise InvalidRequest('"session_id" must be a UUID in its canonical 36-character form.')
    return parsed


def parse_resume_token(value: Any) -> str:
    """A `resume_token`: the opaque string the server handed out; its shape is all that is checked here."""
    if not isinstance(value, str) or not value:
        raise InvalidRequest('"resume_token" is required: the token from the last reply for this session.')
    if len(value) > MAX_RESUME_TOKEN_CHARS:
        raise InvalidRequest(f'"resume_token" is longer than {MAX_RESUME_TOKEN_CHARS} characters.')
    return value


def new_session_reply(
    *,
    session_id: UUID,
    workspace_dir: str,
    created_at: datetime,
    request_id: RequestId | None,
    resume: "ResumeGrant | None" = None,
) -> dict[str, Any]:
    """The success reply to `new_session`; a resumable one carries its token and grace."""
    reply: dict[str, Any] = {
        "type": "new_session",
        "session_id": str(session_id),
        "workspace_dir": workspace_dir,
        "created_at": format_timestamp(created_at),
    }
    if resume is not None:
        reply.update(resume.fields())
    if request_id is not None:
        reply["request_id"] = request_id
    return reply


@dataclass(frozen=True, slots=True)
class ResumeGrant:
    """What a resumable session's client is told: its token (None: resume is off) and the grace."""

    token: str | None
    grace_seconds: float

    def fields(self) -> dict[str, Any]:
        """The reply fields: `resume_token` (when there is one) and `resume_grace_seconds`."""
        grace = int(self.grace_seconds) if float(self.grace_seconds).is_integer() else self.grace_seconds
        fields: dict[str, Any] = {"resume_grace_seconds": grace}
        if self.token is not None:
            fields["resume_token"] = self.token
        return fields


def session_resumed_reply(
    *, session_id: UUID, workspace_dir: str, created_at: datetime, resume: ResumeGrant, request_id: RequestId | None
) -> dict[str, Any]:
    """The success reply to `resume_session`: the same session, a new token."""
    reply: dict[str, Any] = {
        "type": "session_resumed",
        "session_id": str(session_id),
        "workspace_dir": workspace_dir,
        "created_at": format_timestamp(created_at),
        **resume.fields(),
    }
    if request_id is not None:
        reply["request_id"] = request_id
    return reply


def session_ended_reply(*, session_id: UUID, request_id: RequestId | None) -> dict[str, Any]:
    """The success reply to `end_session`."""
    reply: dict[str, Any] = {"type": "session_ended", "session_id": str(session_id)}
    if request_id is not None:
        reply["request_id"] = request_id
    return reply


def error_reply(error: ProtocolError) -> dict[str, Any]:
    """The `error` frame for any ProtocolError."""
    reply: dict[str, Any] = {"type": "error", "code": error.code, "message": error.message}
    if error.request_id is not None:
        reply["request_id"] = error.request_id
    return reply


def format_timestamp(moment: datetime) -> str:
    """RFC 3339 in UTC with a Z and millisecond precision."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def frame_size_check(text: str, limit: int) -> None:
    """Raise MessageTooLarge for a text frame longer than `limit` bytes in UTF-8."""
    if utf8_length_exceeds(text, limit):
        raise MessageTooLarge(f"The frame is larger than the limit of {limit} bytes.")


def utf8_length_exceeds(text: str, limit: int) -> bool:
    """Whether `text` is longer than `limit` bytes in UTF-8."""
    # A character is 1 to 4 bytes in UTF-8: most frames are decided without encoding.
    if len(text) > limit:
        return True
    if len(text) * 4 <= limit:
        return False
    return len(text.encode("utf-8", "surrogatepass")) > limit


def _load_object(text: str) -> dict[str, Any]:
    if not text:
        raise InvalidJson("The frame is empty: send one JSON object per text frame.")
    try:
        obj = json.loads(text, object_pairs_hook=_reject_duplicate_keys)
    except _DuplicateKey as duplicate:
        raise InvalidJson(f"The JSON object repeats the key {duplicate.key[:64]!r}.") from None
    except (ValueError, RecursionError):
        # ValueError covers malformed JSON and integers past Python's digit limit;
        # RecursionError covers absurdly deep nesting.
        raise InvalidJson("The frame is not valid JSON.") from None
    if not isinstance(obj, dict):
        raise InvalidJson(f"The frame must be a JSON object, not a JSON {_json_kind(obj)}.")
    return obj


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return obj


def _echoable_request_id(value: Any) -> RequestId | None:
    if isinstance(value, str) and len(value) <= MAX_REQUEST_ID_CHARS:
        return value
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) <= MAX_SAFE_INTEGER:
        return value
    return None


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if value is None:
        return "null"
    return "number"


def encode(reply: Mapping[str, Any]) -> str:
    """Serialize a reply; ensure_ascii keeps lone surrogates from breaking the UTF-8 frame."""
    return json.dumps(reply, separators=(",", ":"))
