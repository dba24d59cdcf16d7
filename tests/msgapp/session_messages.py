"""The test app's message types: one of each thing a handler may do."""

import asyncio
from typing import Any

from sessions_app.errors import WorkspaceForbidden
from sessions_app.message_types import ClientMessage, Library, MessageContext

register = Library()

# Set by a test: `msgapp_hold` sets `entered`, then waits until the test sets `gate`.
entered: asyncio.Event | None = None
gate: asyncio.Event | None = None

ECHO = {
    "type": "object",
    "required": ["text"],
    "additionalProperties": False,
    "properties": {
        "text": {"type": "string", "maxLength": 50},
        "times": {"type": "integer", "minimum": 1, "maximum": 3},
        "options": {
            "type": "object",
            "properties": {"shout": {"type": "boolean"}},
            "additionalProperties": {"type": "boolean"},
        },
    },
}

ECHOED = {
    "type": "object",
    "required": ["text", "session_id", "workspace_dir", "user", "boot_id"],
    "additionalProperties": False,
    "properties": {
        "text": {"type": "string"},
        "session_id": {"type": "string", "format": "uuid"},
        "workspace_dir": {"type": "string"},
        "user": {"type": ["string", "null"]},
        "boot_id": {"type": "string"},
    },
}

NOTHING = {"type": "object", "properties": {}}
WHO = {
    "type": "object",
    "required": ["session_id", "pid"],
    "additionalProperties": False,
    "properties": {"session_id": {"type": ["string", "null"]}, "pid": {"type": "integer"}},
}


@register.message_type("msgapp_echo", schema=ECHO, reply_schema=ECHOED)
async def echo(context: MessageContext, message: ClientMessage) -> dict[str, Any]:
    """Echo the text, with what the handler knows of the session."""
    text = message.fields["text"] * message.fields.get("times", 1)
    if message.fields.get("options", {}).get("shout"):
        text = text.upper()
    user = context.user
    return {
        "text": text,
        "session_id": str(context.session_id),
        "workspace_dir": context.workspace_dir,
        "user": user.get_username() if user is not None and user.is_authenticated else None,
        "boot_id": str(context.process.boot_id),
    }


@register.message_type("msgapp_who", schema=NOTHING, reply_schema=WHO, needs_session=False)
async def who(context: MessageContext, message: ClientMessage) -> dict[str, Any]:
    """Say which session (if any) and process answered."""
    return {"session_id": None if context.session_id is None else str(context.session_id), "pid": context.process.pid}


@register.message_type("msgapp_refuse", schema=NOTHING, needs_session=False)
async def refuse(context: MessageContext, message: ClientMessage) -> None:
    """Refuse with one of the protocol's errors."""
    raise WorkspaceForbidden("The test app refuses this.")


@register.message_type("msgapp_crash", schema=NOTHING, needs_session=False)
async def crash(context: MessageContext, message: ClientMessage) -> None:
    """Fail with an exception no handler should let out."""
    raise RuntimeError("the test app's bug")


@register.message_type("msgapp_hold", schema=NOTHING, needs_session=False)
async def hold(context: MessageContext, message: ClientMessage) -> None:
    """Wait for the test's gate, sending nothing."""
    assert entered is not None and gate is not None
    entered.set()
    await gate.wait()


NOTIFIED = {
    "type": "object",
    "required": ["seq"],
    "additionalProperties": False,
    "properties": {"seq": {"type": "integer"}},
}


@register.message_type("msgapp_notify", schema=ECHO, reply_schema=NOTIFIED)
async def notify(context: MessageContext, message: ClientMessage) -> dict[str, Any]:
    """Send the text back to the session as a `msgapp.note` event; reply with its seq."""
    return {"seq": await context.send_event("msgapp.note", {"text": message.fields["text"]})}
