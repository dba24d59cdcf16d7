"""`python -m bench.layer_outage`: what each channels-redis layer does when Redis goes away.

Starts its own redis-server on a free loopback port (never the machine's), and for each
layer (channels-redis's core layer, its pub/sub layer, and this project's core subclass)
and each fault (the link cut for 5 s behind a TCP proxy; redis-server stopped and started
again, losing its data) it records what a receiver sees, whether a channel can be made
and a message sent during the outage, whether the first message sent after the recovery
arrives, and how long after the recovery messages arrive again (one sent every 0.25 s).
Prints one Markdown table (docs/performance.md, "Redis outages").
"""

import argparse
import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

from channels_redis.core import RedisChannelLayer as CoreLayer
from channels_redis.pubsub import RedisPubSubChannelLayer as PubSubLayer

from sessions_app.layers import RedisChannelLayer as ProjectLayer
from tests.proxy import TcpProxy
from tests.servers import RedisServer

LAYERS = {"core": CoreLayer, "pubsub": PubSubLayer, "project": ProjectLayer}
OUTAGE_SECONDS = 5.0
ARRIVAL_TIMEOUT = 10.0


class LogCounter(logging.Handler):
    """Counts the records the layers log (channels-redis logs its pub/sub failures)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


@dataclass
class Outcome:
    layer: str
    fault: str
    receiver: str = "kept waiting"
    new_channel_during: str = ""
    send_during: str = ""
    after_arrived: str = "never"
    first_after: str = "-"
    other_during: str = "-"
    log_records: int = 0


def describe(error: BaseException) -> str:
    return f"{type(error).__name__}"


async def measure(name: str, fault: str, redis: RedisServer, proxy: TcpProxy) -> Outcome:
    port = proxy.port if fault == "cut" else redis.port
    hosts = [{"address": f"redis://127.0.0.1:{port}/0", "socket_timeout": 15}]
    layer = LAYERS[name](hosts=hosts, prefix=f"measure-{name}-{fault}")
    outcome = Outcome(name, fault)
    counter = LogCounter()
    logging.getLogger("channels_redis").addHandler(counter)
    logging.getLogger("channels_redis").setLevel(logging.DEBUG)
    received: asyncio.Queue = asyncio.Queue()
    channel = await layer.new_channel()
    started = time.monotonic()

    async def receiver() -> None:
        while True:
            try:
                received.put_nowait((await layer.receive(channel))["text"])
            except Exception as error:
                outcome.receiver = f"raised {describe(error)} after {time.monotonic() - started:.1f} s"
                return

    task = asyncio.ensure_future(receiver())
    await layer.send(channel, {"type": "m", "text": "before"})
    assert await asyncio.wait_for(received.get(), 10) == "before"

    started = time.monotonic()
    if fault == "cut":
        proxy.cut()
    else:
        redis.stop()
    await asyncio.sleep(1)
    try:
        await asyncio.wait_for(layer.new_channel(), 5)
        outcome.new_channel_during = "ok"
    except Exception as error:
        outcome.new_channel_during = f"raised {describe(error)}"
    try:
        await asyncio.wait_for(layer.send(channel, {"type": "m", "text": "during"}), 5)
        outcome.send_during = "ok"
    except Exception as error:
        outcome.send_during = f"raised {describe(error)}"
    if fault == "cut":
        # Another process whose own link to Redis is fine (only the receiver's link is cut).
        other = LAYERS[name](hosts=[{"address": f"redis://127.0.0.1:{redis.port}/0"}], prefix=layer.prefix)
        await other.send(channel, {"type": "m", "text": "during-other"})
        outcome.other_during = "sent"
    await asyncio.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - started)))
    if fault == "cut":
        proxy.restore()
    else:
        redis.start()
    restored = time.monotonic()
    # The first send that works after the recovery, then one every 0.25 s until any arrives.
    sent_first = False
    texts: list[str] = []
    deadline = restored + ARRIVAL_TIMEOUT
    while time.monotonic() < deadline and not any(text.startswith("after") for text in texts):
        text = "after-first" if not sent_first else "after-later"
        try:
            await asyncio.wait_for(layer.send(channel, {"type": "m", "text": text}), 5)
            sent_first = True
        except Exception:
            pass
        with contextlib.suppress(TimeoutError):
            texts.append(await asyncio.wait_for(received.get(), 0.25))
    arrived = [text for text in texts if text.startswith("after")]
    if arrived:
        outcome.after_arrived = f"{time.monotonic() - restored:.2f} s after the recovery"
        outcome.first_after = "yes" if "after-first" in texts else "lost"
        with contextlib.suppress(TimeoutError):  # the first one may still be on its way
            while outcome.first_after == "lost":
                if await asyncio.wait_for(received.get(), 0.5) == "after-first":
                    outcome.first_after = "yes"
    if outcome.other_during == "sent":
        with contextlib.suppress(TimeoutError):
            while "during-other" not in texts:
                texts.append(await asyncio.wait_for(received.get(), 1))
        outcome.other_during = "arrived" if "during-other" in texts else "lost"
    outcome.log_records = counter.count
    logging.getLogger("channels_redis").removeHandler(counter)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    if hasattr(layer, "flush"):
        await asyncio.gather(layer.flush(), return_exceptions=True)
    return outcome


async def main(layers: list[str]) -> None:
    redis = RedisServer().start()
    proxy = await TcpProxy("127.0.0.1", redis.port).start()
    outcomes = []
    try:
        for name in layers:
            for fault in ("cut", "restart"):
                outcomes.append(await measure(name, fault, redis, proxy))
                print(outcomes[-1], flush=True)
    finally:
        await proxy.stop()
        redis.stop()
    print(f"\nRedis away for {OUTAGE_SECONDS:g} s (cut: link reset behind a proxy; restart: redis-server stopped)\n")
    print(
        "| layer | fault | receiver during the outage | new_channel during | send during "
        "| sent during by a process still linked | first send after the recovery arrives "
        "| messages arrive again | log records |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for o in outcomes:
        print(
            f"| {o.layer} | {o.fault} | {o.receiver} | {o.new_channel_during} | {o.send_during} "
            f"| {o.other_during} | {o.first_after} | {o.after_arrived} | {o.log_records} |"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", nargs="+", default=list(LAYERS), choices=list(LAYERS))
    parser.add_argument("--seconds", type=float, default=OUTAGE_SECONDS, help="how long Redis is away")
    arguments = parser.parse_args()
    OUTAGE_SECONDS = arguments.seconds
    asyncio.run(main(arguments.layers))
