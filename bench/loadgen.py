"""The load generator: the three scenarios, driving any target the same way over loopback.

Every scenario is bounded in count and in time, shows a tqdm bar on stderr, and returns
plain figures. Client CPU is measured next to the server's so a saturated generator shows.
"""

import asyncio
import json
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from tqdm import tqdm
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException

CLIENT_OPTIONS = {
    "compression": None,
    "proxy": None,
    "ping_interval": None,
    "open_timeout": 30,
    "close_timeout": 30,
    "user_agent_header": None,
}
TRANSPORT_ERRORS = (OSError, WebSocketException, TimeoutError, ValueError)


@dataclass
class Figures:
    """What one scenario measured on one target."""

    count: int = 0
    elapsed: float = 0.0
    latencies: list[float] = field(default_factory=list)
    errors: Counter = field(default_factory=Counter)
    extra: dict = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.count / self.elapsed if self.elapsed else 0.0

    def percentile_ms(self, q: float) -> float:
        if len(self.latencies) < 2:
            return self.latencies[0] * 1000 if self.latencies else float("nan")
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[round(q) - 1] * 1000


def new_session_frame(workspace: str, request_id: int) -> str:
    return json.dumps({"type": "new_session", "workspace_dir": workspace, "request_id": request_id})


def progress(total: int, desc: str) -> tqdm:
    return tqdm(total=total, desc=desc, unit="", file=sys.stderr, leave=False, mininterval=0.5, dynamic_ncols=True)


async def open_session(url: str, workspace: str, request_id: int) -> tuple[ClientConnection, dict]:
    """Connect and send `new_session`; the connection and the decoded reply."""
    ws = await connect(url, **CLIENT_OPTIONS)
    await ws.send(new_session_frame(workspace, request_id))
    return ws, json.loads(await ws.recv())


async def open_sessions(
    url: str, workspace: str, numbers, figures: Figures, bar: tqdm, *, held: list[ClientConnection] | None
) -> None:
    """One client: opens sessions numbered from the shared `numbers` until none are left.

    Each is closed cleanly, or kept open in `held`; latency is connect to reply (and close).
    """
    for number in numbers:
        started = time.perf_counter()
        try:
            ws, reply = await open_session(url, workspace, number)
            if held is None:
                await ws.close()
            else:
                held.append(ws)
            if reply.get("type") == "new_session":
                figures.latencies.append(time.perf_counter() - started)
                figures.count += 1
            else:
                figures.errors[reply.get("code", "bad_reply")] += 1
        except TRANSPORT_ERRORS as error:
            figures.errors[type(error).__name__] += 1
        bar.update()


async def run_bounded(figures: Figures, bar: tqdm, timeout: float, clients) -> None:
    """Run the clients together within `timeout`; their wall time goes into figures.elapsed."""
    started = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            await asyncio.gather(*clients)
    except TimeoutError:
        figures.errors["scenario_timeout"] += 1
    figures.elapsed = time.perf_counter() - started
    bar.close()


async def churn(url: str, *, workspace: str, sessions: int, concurrency: int, timeout: float, desc: str) -> Figures:
    """S sessions at concurrency C: connect, new_session, reply, close. Latency is the whole session."""
    figures = Figures()
    numbers = iter(range(sessions))
    bar = progress(sessions, desc)
    clients = [open_sessions(url, workspace, numbers, figures, bar, held=None) for _ in range(concurrency)]
    await run_bounded(figures, bar, timeout, clients)
    return figures


async def hold(
    url: str,
    *,
    workspace: str,
    sessions: int,
    concurrency: int,
    timeout: float,
    desc: str,
    rss: Callable[[], int],
    registry_count: Callable[[], int],
) -> Figures:
    """K live sessions: time to establish, server RSS per session, drain time after an abrupt drop."""
    figures = Figures()
    held: list[ClientConnection] = []
    numbers = iter(range(sessions))
    bar = progress(sessions, desc)
    settle = 0.1 + min(1.0, sessions / 4000)  # seconds for the server (and its allocator) to settle
    await asyncio.sleep(settle)
    rss_before = rss()
    clients = [open_sessions(url, workspace, numbers, figures, bar, held=held) for _ in range(concurrency)]
    await run_bounded(figures, bar, timeout, clients)
    await asyncio.sleep(settle)
    rss_after = rss()
    live = await asyncio.to_thread(registry_count)
    figures.extra.update(
        rss_before=rss_before,
        rss_after=rss_after,
        bytes_per_session=(rss_after - rss_before) / max(figures.count, 1),
        registry_while_held=live,
    )
    if live != figures.count:
        figures.errors["registry_mismatch"] += 1

    # The abrupt drop: every TCP transport aborted at once, no close frames.
    dropped = time.perf_counter()
    for ws in held:
        ws.transport.abort()
    drain_deadline = dropped + timeout
    remaining = live
    while time.perf_counter() < drain_deadline:
        remaining = await asyncio.to_thread(registry_count)
        if remaining == 0:
            break
        await asyncio.sleep(0.02)
    figures.extra.update(drain_seconds=time.perf_counter() - dropped, registry_after=remaining)
    if remaining:
        figures.errors["registry_not_drained"] += 1
    return figures


async def steady(url: str, *, workspace: str, connections: int, messages: int, timeout: float, desc: str) -> Figures:
    """C open sessions sending back to back: a second `new_session` on a connection that holds one.

    Protocol v1 has only `new_session`, so the steady message is the repeat, answered with
    `session_exists`: a full decode, dispatch and error-reply round trip, no registry write.
    """
    figures = Figures()
    opened: list[ClientConnection] = []
    for number in range(connections):
        try:
            ws, reply = await open_session(url, workspace, number)
            opened.append(ws)
            if reply.get("type") != "new_session":
                figures.errors[reply.get("code", "bad_reply")] += 1
        except TRANSPORT_ERRORS as error:
            figures.errors[type(error).__name__] += 1
    numbers = iter(range(messages))
    bar = progress(messages, desc)

    async def client(ws: ClientConnection) -> None:
        for number in numbers:
            sent = time.perf_counter()
            try:
                await ws.send(new_session_frame(workspace, number))
                reply = json.loads(await ws.recv())
            except TRANSPORT_ERRORS as error:
                figures.errors[type(error).__name__] += 1
                return
            if reply.get("code") == "session_exists":
                figures.latencies.append(time.perf_counter() - sent)
                figures.count += 1
            else:
                figures.errors[reply.get("code", "bad_reply")] += 1
            bar.update()

    await run_bounded(figures, bar, timeout, [client(ws) for ws in opened])
    await asyncio.gather(*(ws.close() for ws in opened), return_exceptions=True)
    return figures
