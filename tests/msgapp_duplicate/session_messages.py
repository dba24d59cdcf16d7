"""Declares `list_workspace` again: the server must refuse to start."""

from sessions_app.message_types import ClientMessage, Library, MessageContext

register = Library()


@register.message_type("list_workspace", schema={"type": "object"})
async def list_workspace(context: MessageContext, message: ClientMessage) -> None:
    """A second list_workspace."""
