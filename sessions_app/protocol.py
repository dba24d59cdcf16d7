"""Wire protocol v1, pure: decode a frame into a message, build every reply.

Imports neither Channels nor the ORM, so it is tested without a database or event loop.
See docs/protocol.md for the prose and docs/asyncapi.yaml for the schema.
"""

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
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

PROTOCOL_VERSION = 1
# Optional WebSocket subprotocol name; selected when the client offers it (browsers that
# offer subprotocols, e.g. to carry a token, fail the handshake unless one is selected).
SUBPROTOCOL = "wss-sessions.v1"
MAX_REQUEST_ID_CHARS = 128
# JSON numbers beyond 2**53 lose precision in JavaScript clients, so they cannot round-trip.
MAX_SAFE_INTEGER = 2**53 - 1
MAX_PATH_BYTES = 4096  # Linux PATH_MAX
MAX_COMPONENT_BYTES = 255  # Linux NAME_MAX


@dataclass(frozen=True, slots=True)
class NewSession:
    """`new_session`: open a session on a workspace directory."""

    workspace_dir: str
    request_id: RequestId | None = None

    @classmethod
    def parse(cls, fields: Mapping[str, Any], request_id: RequestId | None) -> "NewSession":
        """Validate the fields of a decoded `new_session` object."""
        return cls(workspace_dir=parse_workspace_dir(fields.get("workspace_dir")), request_id=request_id)


Message = NewSession

# One line per client message type; the consumer has a handler for each.
MESSAGE_TYPES: dict[str, Callable[[Mapping[str, Any], RequestId | None], Message]] = {
    "new_session": NewSession.parse,
}


def subprotocol_choose(offered: list[str]) -> str | None:
    """The subprotocol to select from the client's offer: ours, or none."""
    return SUBPROTOCOL if SUBPROTOCOL in offered else None


def decode(text_data: str | None, bytes_data: bytes | None, *, limit: int) -> Message:
    """Turn one WebSocket frame into a message, or raise the ProtocolError that answers it."""
    if text_data is None:
        raise UnsupportedFrame("Binary frames are not supported: send JSON in a text frame.")
    if utf8_length_exceeds(text_data, limit):
        raise MessageTooLarge(f"The frame is larger than the limit of {limit} bytes.")
    obj = _load_object(text_data)
    request_id = _echoable_request_id(obj.get("request_id"))
    try:
        message_type = obj.get("type")
        if not isinstance(message_type, str):
            raise UnknownType('The message needs a "type" string, such as "new_session".')
        parse = MESSAGE_TYPES.get(message_type)
        if parse is None:
            known = ", ".join(sorted(MESSAGE_TYPES))
            raise UnknownType(f"Unknown message type {message_type[:64]!r}; known types: {known}.")
        return parse(obj, parse_request_id(obj))
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


def new_session_reply(
    *, session_id: UUID, workspace_dir: str, created_at: datetime, request_id: RequestId | None
) -> dict[str, Any]:
    """The success reply to `new_session`."""
    reply: dict[str, Any] = {
        "type": "new_session",
        "session_id": str(session_id),
        "workspace_dir": workspace_dir,
        "created_at": format_timestamp(created_at),
    }
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
