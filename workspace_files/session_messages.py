"""`list_workspace`: the entries of a directory inside the session's workspace."""

import time
from typing import Any

from sessions_app.conf import app_settings
from sessions_app.message_types import ClientMessage, Library, MessageContext
from sessions_app.resolver import filesystem_run

from .listing import workspace_list

register = Library()

MAX_LIMIT = 1000
REPLY_ENVELOPE_BYTES = 256  # type, path, truncated, request_id around the entries

LIST_WORKSPACE = {
    "type": "object",
    "additionalProperties": False,
    "description": "Needs a session. Unknown fields are refused.",
    "properties": {
        "path": {
            "type": "string",
            "maxLength": 4096,
            "default": "",
            "description": 'A directory relative to the session\'s workspace ("" or "." for the workspace itself);'
            " no `..`, not absolute. Symlinks are followed while they stay inside the workspace.",
        },
        "limit": {
            "type": "integer",
            "minimum": 1,
            "maximum": MAX_LIMIT,
            "default": 100,
            "description": "At most this many entries (the first by name).",
        },
    },
}

LISTING = {
    "type": "object",
    "required": ["path", "entries", "truncated"],
    "additionalProperties": False,
    "properties": {
        "path": {"type": "string", "description": 'The directory, normalized ("" for the workspace).'},
        "entries": {
            "type": "array",
            "maxItems": MAX_LIMIT,
            "items": {
                "type": "object",
                "required": ["name", "kind", "size"],
                "additionalProperties": False,
                "properties": {
                    "name": {"type": "string", "minLength": 1},
                    "kind": {"enum": ["file", "directory", "symlink", "other"]},
                    "size": {"type": ["integer", "null"], "minimum": 0, "description": "Bytes, for files."},
                },
            },
        },
        "truncated": {
            "type": "boolean",
            "description": "true when the directory holds more than the reply shows (limit, frame size,"
            " or the server's scan bound: 10,000 entries or half of WSS_WORKSPACE_RESOLVE_TIMEOUT_SECONDS).",
        },
    },
}


@register.message_type(
    "list_workspace",
    schema=LIST_WORKSPACE,
    reply_schema=LISTING,
    examples=[{"type": "list_workspace", "path": "src", "limit": 100, "request_id": "l1"}],
)
async def list_workspace(context: MessageContext, message: ClientMessage) -> dict[str, Any]:
    """List a directory inside the session's workspace: each entry's name, kind and size."""
    workspace_dir, path = context.workspace_dir, message.fields.get("path", "")
    limit = message.fields.get("limit", 100)
    max_bytes = app_settings.WSS_MAX_MESSAGE_BYTES - REPLY_ENVELOPE_BYTES
    # A slow but moving scan stops at half the bound and answers what it has, rather than `unavailable`.
    deadline = time.monotonic() + app_settings.WSS_WORKSPACE_RESOLVE_TIMEOUT_SECONDS / 2
    listing = await filesystem_run(
        lambda: workspace_list(workspace_dir, path, limit=limit, max_bytes=max_bytes, deadline=deadline),
        what="The directory could not be listed",
    )
    return {"path": listing.path, "entries": listing.entries, "truncated": listing.truncated}
