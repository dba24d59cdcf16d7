"""Fault injection: the registry stays true when PostgreSQL or Redis falters under live servers.

Real daphne processes reach PostgreSQL and Redis through loopback TCP proxies
(tests/proxy.py) that cut, stall and restore; clients hold sessions while a few more open
and close sessions all along (churn). After each fault one invariant is checked by one
helper, `registry_converges`: the session ids in the registry equal exactly the ids of the
sessions the clients still hold, within the bound docs/operations.md states. Each case
prints its measured figures (`pytest -s`); the table in docs/operations.md comes from them.
The test process itself reads the registry directly, never through a proxy.
"""

import asyncio
import json
import signal
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import websockets
from django.conf import settings

from .communicators import frames_until_closed, new_session_frame
from .polling import SLACK, wait_until
from .servers import RedisServer, ServerProcess, database_url_via, redis_url_via, session_ids

pytestmark = [pytest.mark.production, pytest.mark.live, pytest.mark.django_db(transaction=True)]

HEARTBEAT, TIMEOUT = 1, 5
FAST = {"WSS_HEARTBEAT_SECONDS": str(HEARTBEAT), "WSS_INSTANCE_TIMEOUT_SECONDS": str(TIMEOUT)}
# What a loaded 2-core machine may add to a documented bound (scheduling, a connect, a query).
# Bounds documented in docs/operations.md ("What survives what").
LAYER_RESUME_BOUND = 2.0  # the layer's probe pings at most once a second; then the consumer reads
RECONCILE_BOUND = 2 * HEARTBEAT + 1  # a reconcile pass runs at each heartbeat; a row in flight gets one more
ANSWER_BOUND = 10.0  # a new_session during a database stall is answered within this
# After a stall the stuck calls time out (WSS_REGISTRY_TIMEOUT_SECONDS, 5 s) before fresh ones run.
STALL_BOUND = RECONCILE_BOUND + 5
CHURN_WORKERS = 3  # per server: clients that open a session, hold it a moment, close it, again


# --- clients ----------------------------------------------------------------------------------


@dataclass
class Held:
    """A session a client holds, with everything the server sent it until the connection closed."""

    ws: websockets.ClientConnection
    session_id: str
    frames: list[dict] = field(default_factory=list)
    close_code: int | None = None
    reader: asyncio.Task | None = None

    @property
    def open(self) -> bool:
        return self.reader is not None and not self.reader.done()

    async def read(self) -> None:
        _, self.close_code = await frames_until_closed(self.ws, None, into=self.frames)


class Clients:
    """Clients holding sessions: which ones they hold is the truth the registry must equal."""

    def __init__(self, workspace) -> None:
        self.workspace = str(workspace)
        self.sessions: list[Held] = []

    async def open(self, url: str, count: int) -> list[Held]:
        """Open `count` sessions on `url`, ten handshakes at a time."""
        gate = asyncio.Semaphore(10)

        async def one() -> Held:
            async with gate:
                ws = await websockets.connect(url, open_timeout=20)
                await ws.send(new_session_frame(self.workspace))
                reply = json.loads(await asyncio.wait_for(ws.recv(), 20))
                assert reply["type"] == "new_session", reply
                held = Held(ws, reply["session_id"])
                held.reader = asyncio.ensure_future(held.read())
                return held

        opened = await asyncio.gather(*(one() for _ in range(count)))
        self.sessions.extend(opened)
        return opened

    def held(self) -> set[str]:
        """The ids of the sessions whose connections are open."""
        return {held.session_id for held in self.sessions if held.open}

    async def close(self, sessions: list[Held]) -> None:
        await asyncio.gather(*(held.ws.close() for held in sessions), return_exceptions=True)
        await asyncio.gather(*(held.reader for held in sessions), return_exceptions=True)

    async def close_all(self) -> None:
        await self.close(self.sessions)


class Churn:
    """A bounded number of clients that open a session, hold it briefly and close it, until stopped."""

    def __init__(self, urls: list[str], workspace) -> None:
        self.frame = new_session_frame(workspace)
        self.counts: Counter = Counter()
        self._stop = asyncio.Event()
        self._tasks = [asyncio.ensure_future(self._worker(url)) for url in urls for _ in range(CHURN_WORKERS)]

    async def _worker(self, url: str) -> None:
        while not self._stop.is_set():
            try:
                async with websockets.connect(url, open_timeout=10, close_timeout=5) as ws:
                    await ws.send(self.frame)
                    reply = json.loads(await asyncio.wait_for(ws.recv(), 15))
                    self.counts["opened" if reply["type"] == "new_session" else reply["code"]] += 1
                    await asyncio.sleep(0.2)
            except (OSError, TimeoutError, websockets.WebSocketException) as error:
                self.counts[type(error).__name__] += 1
            await asyncio.sleep(0.05)

    async def stop(self) -> Counter:
        """Stop, and wait until every churn client has closed its connection."""
        self._stop.set()
        await asyncio.wait_for(asyncio.gather(*self._tasks, return_exceptions=True), 30)
        return self.counts


# --- the invariant ----------------------------------------------------------------------------


async def registry_converges(clients: Clients, *, bound: float, case: str, since: float, record) -> float:
    """Wait until the registry's session ids equal exactly the sessions the clients hold.

    `since` is the monotonic time the clock starts from (the fault's end); fails after
    `bound` + SLACK seconds. Prints and records the seconds it took.
    """

    async def equal() -> bool:
        return await session_ids() == clients.held()

    waited = time.monotonic() - since
    try:
        await wait_until(equal, timeout=max(0.0, bound + SLACK - waited), step=0.1, what=f"{case}: rows == held")
    except pytest.fail.Exception:
        rows, held = await session_ids(), clients.held()
        pytest.fail(
            f"{case}: after {bound + SLACK:g} s, {len(rows - held)} row(s) no client holds, "
            f"{len(held - rows)} held session(s) without a row ({len(held)} held)"
        )
    took = time.monotonic() - since
    report(record, case, f"registry == the {len(clients.held())} held sessions, {took:.2f} s after the fault", took)
    assert took <= bound + SLACK
    return took


def report(record: Callable, case: str, text: str, seconds: float | None = None) -> None:
    """Print a figure (shown by `pytest -s`, and in the test's captured output) and record it."""
    print(f"\n[faults] {case}: {text}")
    if seconds is not None:
        record(f"{case} seconds", round(seconds, 2))


# --- servers behind proxies -------------------------------------------------------------------


@pytest.fixture
def own_redis():
    """A redis-server of this test's own, on a free loopback port: the one a test may restart."""
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture
def cluster(server_factory, database_proxy, redis_proxy):
    """Start daphne processes whose PostgreSQL and Redis are behind this test's proxies."""

    async def start(count: int, *, redis_url: str | None = None, **env: str) -> list[ServerProcess]:
        redis_url = redis_url or redis_url_via(redis_proxy, settings.REDIS_URL)
        full_env = {**FAST, "DATABASE_URL": database_url_via(database_proxy), "REDIS_URL": redis_url, **env}
        # Started off the event loop: the proxies forward only while it runs.
        return list(await asyncio.gather(*(asyncio.to_thread(server_factory, env=full_env) for _ in range(count))))

    return start


@pytest.fixture
async def clients(workspace):
    clients = Clients(workspace)
    yield clients
    await clients.close_all()


@pytest.fixture
def staff_token(staff_user) -> str:
    """A bearer token of an operator allowed to view and terminate live sessions, for the servers' API."""
    from sessions_app.tokens import token_create

    return token_create(user=staff_user("operator", "view_livesession", "delete_livesession"), name="faults")[1]


def http(server: ServerProcess, method: str, path: str, token: str | None = None) -> tuple[int, dict]:
    """One HTTP request to a server (run it in a thread): status and JSON body ({} when empty)."""
    request = urllib.request.Request(server.http_url + path, method=method)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, body = error.code, error.read()
    return status, json.loads(body) if body else {}


def metric_samples(server: ServerProcess) -> dict[str, float]:
    """A server's /metrics as {'name{labels}': value} (loopback is let in without a token)."""
    with urllib.request.urlopen(server.http_url + "/metrics", timeout=20) as response:
        lines = response.read().decode().splitlines()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in lines if not line.startswith("#")}


def assert_no_traceback(*servers: ServerProcess) -> None:
    """No server logged an exception it did not handle."""
    for server in servers:
        server.assert_no_traceback()


async def terminated_with_4410(held: Held, bound: float) -> float:
    """Wait until the client saw `session_terminated` and close 4410; the seconds it took."""
    took = await wait_until(lambda: not held.open, timeout=bound + SLACK, what="the terminate reaching its client")
    assert (held.frames[-1]["code"], held.close_code) == ("session_terminated", 4410)
    return took


# --- Redis --------------------------------------------------------------------------------------


async def test_redis_outage_of_5_s_closes_no_connection_and_a_later_terminate_arrives(
    cluster, redis_proxy, clients, staff_token, record_property
):
    case = "Redis cut 5 s"
    a, b = await cluster(2)
    on_a, on_b = await clients.open(a.url, 15), await clients.open(b.url, 15)
    churn = Churn([a.url, b.url], clients.workspace)
    # Ready with connections held: the readiness round trip shares the consumers' Redis read.
    ready = await asyncio.to_thread(http, a, "GET", "/readyz")
    assert ready[0] == 200, ready

    redis_proxy.cut()
    cut_at = time.monotonic()
    # /readyz says the layer is down while it is: a consumer's failed receive marks it at once.
    await wait_until(
        lambda: asyncio.to_thread(lambda: http(a, "GET", "/readyz")[0] == 503), timeout=5, what="/readyz 503"
    )
    status, body = await asyncio.to_thread(http, a, "GET", "/readyz")
    assert body["failed"] == ["channel_layer"] and body["checks"]["database"] == "ok", body
    # The WebSocket side keeps working: new_session needs only the database.
    [during] = await clients.open(b.url, 1)
    # A terminate that cannot reach Redis says so, and does nothing.
    status, body = await asyncio.to_thread(http, a, "DELETE", f"/api/sessions/{on_b[0].session_id}", staff_token)
    assert status == 503 and "channel layer" in body["detail"], (status, body)
    await asyncio.sleep(max(0.0, 5 - (time.monotonic() - cut_at)))
    redis_proxy.restore()
    restored = time.monotonic()

    assert len([held for held in on_a + on_b + [during] if held.open]) == 31
    # A terminate issued after the outage, on process A, reaches a client of process B.
    status, _ = await asyncio.to_thread(http, a, "DELETE", f"/api/sessions/{on_b[1].session_id}", staff_token)
    assert status == 204
    took = await terminated_with_4410(on_b[1], LAYER_RESUME_BOUND)
    report(record_property, case, f"terminate after the restore reached its client in {took:.2f} s", took)
    counts = await churn.stop()
    report(record_property, case, f"churn meanwhile: {dict(counts)}")
    assert counts["opened"] > 0 and not counts["ConnectionClosedError"]
    await registry_converges(clients, bound=RECONCILE_BOUND, case=case, since=restored, record=record_property)
    assert len(clients.held()) == 30  # 15 + 15 + 1 opened during the outage, minus the one terminated
    ready = await asyncio.to_thread(http, a, "GET", "/readyz")
    assert ready[0] == 200, ready
    metrics = await asyncio.to_thread(metric_samples, a)
    assert metrics["wss_channel_layer_outages_total"] == 1
    assert metrics['wss_channel_layer_failures_total{operation="receive"}'] >= 1
    assert metrics["wss_channel_layer_up"] == 1
    for server in (a, b):
        log = server.log()
        assert log.count("channel layer unavailable") == 1, log  # once per outage, not per retry
    assert_no_traceback(a, b)


async def test_redis_restart_closes_no_connection_and_a_later_terminate_arrives(
    cluster, own_redis, clients, staff_token, record_property
):
    case = "Redis restart"
    a, b = await cluster(2, redis_url=own_redis.url)
    on_a, on_b = await clients.open(a.url, 15), await clients.open(b.url, 15)
    churn = Churn([a.url, b.url], clients.workspace)
    await asyncio.sleep(0.5)

    await asyncio.to_thread(own_redis.stop)
    await asyncio.sleep(2)
    await asyncio.to_thread(own_redis.start)  # empty: a restart without persistence loses every key
    restarted = time.monotonic()

    assert len([held for held in on_a + on_b if held.open]) == 30
    status, _ = await asyncio.to_thread(http, a, "DELETE", f"/api/sessions/{on_b[0].session_id}", staff_token)
    assert status == 204
    took = await terminated_with_4410(on_b[0], LAYER_RESUME_BOUND)
    report(record_property, case, f"terminate after the restart reached its client in {took:.2f} s", took)
    counts = await churn.stop()
    report(record_property, case, f"churn meanwhile: {dict(counts)}")
    await registry_converges(clients, bound=RECONCILE_BOUND, case=case, since=restarted, record=record_property)
    assert len(clients.held()) == 29
    assert_no_traceback(a, b)


# --- PostgreSQL ---------------------------------------------------------------------------------


async def test_database_outage_of_8_s_while_30_clients_close_leaves_exactly_the_held_rows(
    cluster, database_proxy, clients, record_property
):
    case = "PostgreSQL cut 8 s"
    # A lease (timeout - heartbeat = 11 s) longer than the outage: the held sessions survive it.
    a, b = await cluster(2, WSS_INSTANCE_TIMEOUT_SECONDS="12")
    on_a, on_b = await clients.open(a.url, 20), await clients.open(b.url, 20)
    churn = Churn([a.url, b.url], clients.workspace)
    await asyncio.sleep(0.5)

    database_proxy.cut()
    cut_at = time.monotonic()
    await clients.close(on_a[:15] + on_b[:15])  # their rows' deletes fail: the database is away
    await asyncio.sleep(max(0.0, 8 - (time.monotonic() - cut_at)))
    database_proxy.restore()
    restored = time.monotonic()
    counts = await churn.stop()
    report(record_property, case, f"churn meanwhile: {dict(counts)}")

    await registry_converges(clients, bound=RECONCILE_BOUND, case=case, since=restored, record=record_property)
    assert all(held.open for held in on_a[15:] + on_b[15:])  # no session lost
    # Fresh sessions are recorded exactly, beside the survivors.
    await clients.open(a.url, 5)
    await clients.open(b.url, 5)
    assert await session_ids() == clients.held() and len(clients.held()) == 20
    assert_no_traceback(a, b)


async def test_database_stall_of_20_s_answers_new_session_within_10_s_and_converges(
    cluster, database_proxy, clients, record_property
):
    case = "PostgreSQL stall 20 s"
    a, b = await cluster(2)
    on_a, on_b = await clients.open(a.url, 10), await clients.open(b.url, 10)
    churn = Churn([a.url, b.url], clients.workspace)
    await asyncio.sleep(0.5)

    database_proxy.stall()  # links stay open, nothing is answered: a hung database
    stalled_at = time.monotonic()
    await asyncio.sleep(1)
    async with websockets.connect(a.url, open_timeout=10) as ws:
        asked = time.monotonic()
        await ws.send(new_session_frame(clients.workspace))
        reply = json.loads(await asyncio.wait_for(ws.recv(), ANSWER_BOUND + SLACK))
        answered = time.monotonic() - asked
    report(record_property, f"{case} new_session", f"answered {reply.get('code', 'ok')} in {answered:.2f} s", answered)
    assert answered <= ANSWER_BOUND
    assert reply["type"] == "new_session" or reply["code"] == "unavailable", reply
    # Longer than the lease (timeout - heartbeat = 4 s): each process closes its sessions itself,
    # with session_lost, before a peer could reap them.
    await wait_until(lambda: not clients.held(), timeout=TIMEOUT + SLACK, what="the lease closing the sessions")
    assert {(held.frames[-1]["code"], held.close_code) for held in on_a + on_b} == {("session_lost", 4503)}
    await asyncio.sleep(max(0.0, 20 - (time.monotonic() - stalled_at)))
    database_proxy.restore()
    restored = time.monotonic()
    counts = await churn.stop()
    report(record_property, case, f"churn meanwhile: {dict(counts)}")

    await registry_converges(clients, bound=STALL_BOUND, case=case, since=restored, record=record_property)
    await wait_until(lambda: fresh_session_recorded(a.url, clients), timeout=STALL_BOUND + SLACK, step=0.5)
    assert await session_ids() == clients.held()
    assert_no_traceback(a, b)


async def fresh_session_recorded(url: str, clients: Clients) -> bool:
    """Open one session; True once the server records it (after a stall it refuses until its lease is back)."""
    ws = await websockets.connect(url, open_timeout=10)
    await ws.send(new_session_frame(clients.workspace))
    reply = json.loads(await asyncio.wait_for(ws.recv(), 15))
    if reply["type"] != "new_session":
        await ws.close()
        return False
    held = Held(ws, reply["session_id"])
    held.reader = asyncio.ensure_future(held.read())
    clients.sessions.append(held)
    return True


async def test_sigkill_during_a_database_outage_is_reaped_by_the_peer_after_the_restore(
    cluster, database_proxy, clients, record_property
):
    case = "SIGKILL during a PostgreSQL cut"
    timeout = 8  # the peer's lease (7 s) outlasts the 3 s cut
    a, b = await cluster(2, WSS_INSTANCE_TIMEOUT_SECONDS=str(timeout))
    on_a, on_b = await clients.open(a.url, 10), await clients.open(b.url, 10)
    churn = Churn([a.url], clients.workspace)
    await asyncio.sleep(0.5)

    database_proxy.cut()
    cut_at = time.monotonic()
    await asyncio.sleep(0.5)
    b.signal(signal.SIGKILL)
    await asyncio.to_thread(b.wait)
    await asyncio.sleep(max(0.0, 3 - (time.monotonic() - cut_at)))
    database_proxy.restore()
    restored = time.monotonic()
    await wait_until(lambda: not any(held.open for held in on_b), timeout=10, what="B's clients seeing the kill")
    assert {held.close_code for held in on_b} == {None}  # 1006: no close frame from a killed process
    counts = await churn.stop()
    report(record_property, case, f"churn meanwhile: {dict(counts)}")

    # The peer reaps only once its own heartbeats have held for a whole timeout after the outage.
    bound = timeout + HEARTBEAT
    await registry_converges(clients, bound=bound, case=case, since=restored, record=record_property)
    assert all(held.open for held in on_a)
    assert_no_traceback(a)
