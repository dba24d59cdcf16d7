"""The core's own client message types, declared as any app declares its own (message_types.py).

Each keeps its hand-written parse() in protocol.py, whose error messages clients rely on;
the schema here documents the same rules for the AsyncAPI document.
"""

from . import protocol
from .message_types import Library, MessageContext

register = Library()

EXTRA_FIELDS_NOTE = "Unknown extra fields are ignored; a repeated key is `invalid_json`."

NEW_SESSION = {
    "type": "object",
    "required": ["workspace_dir"],
    "description": EXTRA_FIELDS_NOTE,
    "properties": {
        "workspace_dir": {
            "type": "string",
            "minLength": 1,
            "pattern": "^/",
            "description": "Absolute, no NUL, valid Unicode, at most 4096 UTF-8 bytes, no component over 255 bytes;"
            " must name an existing directory (after symlinks) inside WSS_WORKSPACE_ROOTS.",
        },
        "resumable": {
            "type": "boolean",
            "default": False,
            "description": "v1.1. true asks for a resumable session (a JSON boolean; anything else is"
            " invalid_request).",
        },
    },
}

RESUME_SESSION = {
    "type": "object",
    "required": ["session_id", "resume_token"],
    "description": "v1.1. Only on a connection that holds no session. Unknown extra fields are ignored.",
    "properties": {
        "session_id": {"$ref": "#/components/schemas/SessionId"},
        "resume_token": {
            "type": "string",
            "minLength": 1,
            "maxLength": protocol.MAX_RESUME_TOKEN_CHARS,
            "description": "The token from the last `new_session` or `session_resumed` reply for this session.",
        },
        "last_seq": {
            "type": "integer",
            "minimum": 0,
            "maximum": protocol.MAX_SAFE_INTEGER,
            "description": (
                "v1.2. The highest event seq the client has seen (0: none yet). The kept events after it are"
                " replayed after `session_resumed`. Anything but such an integer is invalid_request (the"
                " connection stays). Without it nothing is replayed (v1.1)."
            ),
        },
    },
}

END_SESSION = {
    "type": "object",
    "description": "v1.1. Ends this connection's session now; the connection stays open.",
    "properties": {},
}


@register.message_type(
    "new_session",
    schema=NEW_SESSION,
    needs_session=False,
    message=protocol.NewSession,
    reply_message="NewSessionReply",
    examples=[{"type": "new_session", "workspace_dir": "/srv/ws/project", "request_id": "r1"}],
)
async def new_session(context: MessageContext, message: protocol.NewSession) -> None:
    """Open a session on a workspace directory, resumable if asked."""
    await context.connection.on_new_session(message)


@register.message_type(
    "resume_session",
    schema=RESUME_SESSION,
    needs_session=False,
    message=protocol.ResumeSession,
    reply_message="SessionResumedReply",
    examples=[
        {
            "type": "resume_session",
            "session_id": "0b4c7f7e-4d4b-4c55-9e0c-5a0c1f6ad2a1",
            "resume_token": "hT0qz3b1o4mYl5vX8a2kQ9wR7eN6cU1pS3dF0gJ5hK2",
            "last_seq": 6,
            "request_id": "r2",
        }
    ],
)
async def resume_session(context: MessageContext, message: protocol.ResumeSession) -> None:
    """Resume a session (v1.1): reattach it to this connection with its token."""
    await context.connection.on_resume_session(message)


@register.message_type(
    "end_session",
    schema=END_SESSION,
    message=protocol.EndSession,
    reply_message="SessionEndedReply",
    examples=[{"type": "end_session", "request_id": "r3"}],
)
async def end_session(context: MessageContext, message: protocol.EndSession) -> None:
    """End the session, keep the connection (v1.1)."""
    await context.connection.on_end_session(message)
