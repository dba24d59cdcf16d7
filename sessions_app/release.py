"""What the end of a connection does to its session: a resumable one is detached, any other ended."""

from .sessions import SessionRecord, session_close, session_detach


def session_ends_with(close_code: int, *, closing_error: str | None) -> bool:
    """Whether a resumable session ends with its connection: only on the client's own close 1000.

    Any other end (a drop, 1001 going away, a ping timeout, a fatal protocol error, this
    server stopping) detaches it, so the client can resume.
    """
    return close_code == 1000 and closing_error is None


def held_channel(session: SessionRecord, channel_name: str) -> str | None:
    """The channel a delete must still find on the row: the connection's, for a resumable session (it can move)."""
    return channel_name if session.resumable else None


async def session_release(
    *, session: SessionRecord, channel_name: str, close_code: int, closing_error: str | None
) -> bool:
    """End or detach `session`, whose connection on `channel_name` ended; True when it was detached.

    Either write applies only while that connection still holds the row, so a session that
    moved to another connection is left alone.
    """
    if session.resumable and not session_ends_with(close_code, closing_error=closing_error):
        await session_detach(session_id=session.session_id, channel_name=channel_name)
        return True
    await session_close(session_id=session.session_id, channel_name=held_channel(session, channel_name))
    return False
