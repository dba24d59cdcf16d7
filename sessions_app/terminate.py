"""Terminating a session wherever it lives: through the channel layer to its consumer, or the row itself."""

import asyncio
import logging
import uuid
from enum import StrEnum

from channels.exceptions import ChannelFull
from channels.layers import get_channel_layer

from . import metrics
from .layers import LAYER_FAILURES
from .models import LiveSession

logger = logging.getLogger(__name__)


class TerminateResult(StrEnum):
    """What a terminate achieved: only `delivered` and `removed` ended something."""

    DELIVERED = "delivered"  # the channel layer took the message for the consumer that holds the session
    REMOVED = "removed"  # the session's instance is dead: its row was deleted
    NOT_DELIVERED = "not_delivered"  # the channel layer failed: nothing was done, try again
    NOT_FOUND = "not_found"  # no such live session


# How long a terminate waits for the channel layer to take its message: an operator's
# request must not hang on a stalled Redis (the layer's own socket timeout is 15 s).
TERMINATE_SEND_TIMEOUT_SECONDS = 5.0


async def session_terminate_request(*, session_id: uuid.UUID | str) -> TerminateResult:
    """End a live session wherever it lives, and say what happened.

    A session on a live instance is told through the channel layer: its consumer removes
    the row, sends `session_terminated` and closes with 4410. The core Redis layer keeps
    the message until that consumer reads it, so a consumer cut off from Redis gets it when
    Redis is back. When the layer does not take the message, nothing was done:
    `not_delivered`. A detached session, or one whose instance is dead, has no consumer to
    tell, so its row is simply deleted.
    """
    row = await LiveSession.objects.select_related("instance").filter(pk=session_id).afirst()
    if row is None:
        return TerminateResult.NOT_FOUND
    if row.instance is None or not row.instance.is_alive:
        await row.adelete()
        return TerminateResult.REMOVED
    message = {"type": "session.terminate", "session_id": str(row.id)}
    try:
        async with asyncio.timeout(TERMINATE_SEND_TIMEOUT_SECONDS):
            await get_channel_layer().send(row.channel_name, message)
    except (*LAYER_FAILURES, TimeoutError, ChannelFull) as error:
        if isinstance(error, TimeoutError):
            metrics.channel_layer_failed("send")  # Redis stalled; the layer counts the failures it sees
        logger.warning("terminate of session %s not delivered: the channel layer failed (%r)", row.id, error)
        return TerminateResult.NOT_DELIVERED
    return TerminateResult.DELIVERED
