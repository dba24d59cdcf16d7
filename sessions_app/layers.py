"""The project's channel layers.

`InMemoryChannelLayer`: Channels' in-memory layer, without its per-receive walk over every
channel (compat.CleanExpiredAtMostEvery says why).

`RedisChannelLayer`: channels-redis's core layer whose `receive` outlives a Redis outage.
The stock `receive` raises when Redis fails, and Channels' consumer dies of it (close
1011) although its WebSocket is fine. Here a failed receive marks the layer down for the
process, every receive then waits while one probe pings Redis with backoff, and all
resume when it answers. Messages sent to a consumer meanwhile wait in Redis (the core
layer stores them for `expiry` seconds). See docs/decisions.md for why this layer.
"""

import asyncio
import logging
import time
import weakref

import channels_redis.core
from channels.layers import InMemoryChannelLayer as ChannelsInMemoryChannelLayer
from redis.exceptions import RedisError

from . import metrics
from .compat import CleanExpiredAtMostEvery, ReceiveBackupFailuresCounted, redis_connection_keeping_cancellation

logger = logging.getLogger(__name__)

# Failures of Redis itself (refused, reset, timed out, loading after a restart, read-only
# during a failover). Anything else is a bug and still escapes.
LAYER_FAILURES = (RedisError, OSError)


class InMemoryChannelLayer(CleanExpiredAtMostEvery, ChannelsInMemoryChannelLayer):
    """Channels' in-memory layer, cleaning expired messages at most once per `clean_interval`."""

    def __init__(self, *args, clean_interval: float = 1.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.clean_interval = clean_interval


class LayerOutage:
    """One event loop's view of whether Redis answers, and the one probe that finds out when it is back.

    Receivers call `failed()` when Redis fails them and `wait_over()` before each try: while
    the layer is down they all wait on one event instead of each hammering Redis.
    """

    def __init__(self, probe, *, first_delay: float, max_delay: float, probe_timeout: float) -> None:
        self.probe = probe
        self.first_delay, self.max_delay, self.probe_timeout = first_delay, max_delay, probe_timeout
        self.down_since: float | None = None
        self.error = ""
        self._over = asyncio.Event()
        self._over.set()
        self._prober: asyncio.Task | None = None

    @property
    def down(self) -> bool:
        return self.down_since is not None

    async def wait_over(self) -> None:
        """Return at once while the layer is up; otherwise when the probe finds Redis back."""
        if not self._over.is_set():
            await self._over.wait()

    def failed(self, operation: str, error: BaseException) -> None:
        """Redis failed a call: count it; the first failure of an outage is logged and starts the probe."""
        metrics.channel_layer_failed(operation)
        if self.down:
            return
        self.down_since = time.monotonic()
        self.error = f"{type(error).__name__}: {str(error)[:200]}"
        self._over.clear()
        metrics.channel_layer_down()
        logger.warning(
            "channel layer unavailable (%s): connections stay open, layer messages wait until Redis is back",
            self.error,
        )
        self._prober = asyncio.get_running_loop().create_task(self._probe_until_up(), name="wss-layer-probe")

    async def _probe_until_up(self) -> None:
        delay = self.first_delay
        while True:
            await asyncio.sleep(delay)
            try:
                async with asyncio.timeout(self.probe_timeout):
                    await self.probe()
            except (*LAYER_FAILURES, TimeoutError):
                metrics.channel_layer_failed("probe")
                delay = min(delay * 2, self.max_delay)
                continue
            break
        took = time.monotonic() - (self.down_since or time.monotonic())
        self.down_since, self.error, self._prober = None, "", None
        metrics.channel_layer_up()
        logger.warning("channel layer back after %.1f s", took)
        self._over.set()


class RedisChannelLayer(ReceiveBackupFailuresCounted, channels_redis.core.RedisChannelLayer):
    """channels-redis's core layer; `receive` waits out a Redis outage instead of raising."""

    backup_failures = LAYER_FAILURES

    # Retry quickly first (a blip), then at most once a second per process: a restored
    # Redis is noticed within about a second, and an outage costs one ping a second.
    retry_first_delay = 0.05
    retry_max_delay = 1.0
    probe_timeout = 2.0

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._outages: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def create_pool(self, index: int):
        """channels-redis's pool for host `index`, whose connections can be cancelled while they write.

        Without it a consumer cancelled at the wrong moment never ends (sessions_app/compat.py).
        """
        pool = super().create_pool(index)
        pool.connection_class = redis_connection_keeping_cancellation(pool.connection_class)
        return pool

    def outage(self) -> LayerOutage:
        """The outage state of the running event loop (each loop has its own connections)."""
        loop = asyncio.get_running_loop()
        outage = self._outages.get(loop)
        if outage is None:
            outage = self._outages[loop] = LayerOutage(
                self.ping,
                first_delay=self.retry_first_delay,
                max_delay=self.retry_max_delay,
                probe_timeout=self.probe_timeout,
            )
        return outage

    async def ping(self) -> None:
        """PING every Redis host of the layer."""
        for index in range(self.ring_size):
            await self.connection(index).ping()

    async def send(self, channel: str, message: dict) -> None:
        """Send; after a Redis failure, once more at once.

        After an outage, redis-py's pool may still hold a connection that Redis (or the
        network) closed, and the first command on it fails although Redis answers again;
        that failure discards it, so the second attempt gets a fresh one. A repeated message
        is harmless here: a consumer ignores a second terminate.
        """
        for attempt in (1, 2):
            try:
                return await super().send(channel, message)
            except LAYER_FAILURES:
                metrics.channel_layer_failed("send")
                if attempt == 2:
                    raise

    async def receive(self, channel: str) -> dict:
        """The next message on `channel`, however long Redis is away meanwhile."""
        outage = self.outage()
        while True:
            await outage.wait_over()
            try:
                return await super().receive(channel)
            except LAYER_FAILURES as error:
                outage.failed("receive", error)

    def receive_backup_failed(self, error: BaseException) -> None:
        """The cleanup after a read failed with Redis: the message is read again after the outage."""
        metrics.channel_layer_failed("receive")

    def unavailable(self) -> str | None:
        """Why the layer is down on this loop, or None while it is up."""
        outage = self.outage()
        if not outage.down:
            return None
        return f"down for {time.monotonic() - outage.down_since:.0f} s: {outage.error}"
