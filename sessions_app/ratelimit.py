"""Per-connection rate limit: a token bucket, pure (the caller passes the clock).

A connection may send `burst` frames at once and `rate` frames per second on average.
A frame beyond that is refused unread (`RateLimited`, the connection stays open). A
connection that has more than `burst` frames refused before its bucket has refilled is
flooding: `RateLimitExceeded`, and the connection is closed with 4429. Sitting still long
enough to refill the bucket (`burst / rate` seconds) forgives earlier refusals.
"""

from .errors import RateLimited, RateLimitExceeded


class TokenBucket:
    """One connection's allowance of frames; `rate` <= 0 turns the limit off."""

    __slots__ = ("capacity", "rate", "refused", "tokens", "updated")  # one per held connection

    def __init__(self, *, rate: float, burst: int, now: float) -> None:
        self.rate = float(rate)
        self.capacity = float(max(burst, 1))
        self.tokens = self.capacity
        self.refused = 0
        self.updated = now

    def admit(self, now: float) -> None:
        """Take one token for a frame arriving at `now`, or raise the error that answers it."""
        if self.rate <= 0:
            return
        elapsed = max(now - self.updated, 0.0)
        self.updated = now
        self.tokens = min(self.capacity, self.tokens + elapsed * self.rate)
        if self.tokens >= self.capacity:
            self.refused = 0
        if self.tokens >= 1:
            self.tokens -= 1
            return
        self.refused += 1
        if self.refused > self.capacity:
            raise RateLimitExceeded(
                f"Closing: this connection kept sending faster than {self.rate:g} messages per second."
            )
        raise RateLimited(
            f"Too many messages: at most {self.rate:g} per second (bursts of {self.capacity:g}); "
            "this one was dropped unread. Slow down or the connection is closed with 4429."
        )
