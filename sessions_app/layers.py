"""The in-memory channel layer, without its per-receive scan of every channel.

Channels' InMemoryChannelLayer runs `_clean_expired` (a walk over every channel and
group) on each `receive` and `group_send`. Every connection calls `receive` once when
it opens, so holding N connections costs O(N^2): with 8000 held sessions, opening more
spent most of the server's time in that walk. Expiry is measured in seconds (60 s by
default), so walking at most once per `clean_interval` keeps it as correct as before.
"""

import time

from channels.layers import InMemoryChannelLayer as ChannelsInMemoryChannelLayer


class InMemoryChannelLayer(ChannelsInMemoryChannelLayer):
    """Channels' in-memory layer, cleaning expired messages at most once per `clean_interval`."""

    def __init__(self, *args, clean_interval: float = 1.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.clean_interval = clean_interval
        self._cleaned_at = 0.0

    def _clean_expired(self) -> None:
        now = time.monotonic()
        if now - self._cleaned_at < self.clean_interval:
            return
        self._cleaned_at = now
        super()._clean_expired()
