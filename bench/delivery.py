"""`python -m bench.delivery`: what session events cost (protocol v1.2; docs/performance.md).

On PostgreSQL and Redis, with two daphne processes A and B (rate bound off, logs at WARNING):

- push-to-receive latency of an attached session held on A: POST /api/sessions/<id>/events
  to A (same process) and to B (across processes), and asend_session_event() from this
  process, each timed from the call to the frame read by a client; p50 and p99;
- events per second one process delivers: `--events` events sent from this process to
  `--sessions` sessions on A, `--concurrency` at a time; the rate end to end, and A's own
  CPU seconds per event (what bounds one process);
- the kept window: bytes PostgreSQL holds per kept event of a typical payload, and what
  10,000 resumable sessions with full windows (WSS_SESSION_EVENTS_KEPT) hold; beside it,
  the same appends to a Redis stream (XADD ... MAXLEN), the alternative store
  (docs/decisions.md): time per append and bytes per entry.

Loopback only; bounded in counts and time. The bench's database is dropped and re-created.

    python -m bench.delivery --postgres-url postgres://postgres@127.0.0.1:5432/wss_bench_delivery \\
        --redis-url redis://127.0.0.1:6379/0 [--samples 200] [--events 2000] [--sessions 20]
"""

import argparse
import asyncio
import http.client
import json
import os
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

import psutil
import websockets

from .targets import free_port, postgres_drop, postgres_registry

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TYPICAL = {"status": "finished", "build": 1234, "url": "https://ci.example.com/builds/1234", "took_seconds": 83.2}


def progress(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def start_daphne(env: dict[str, str], log_dir: Path) -> tuple[int, "psutil.Popen"]:
    port = free_port()
    log = (log_dir / f"daphne-{port}.log").open("wb")
    command = [str(BIN / "daphne"), "-b", "127.0.0.1", "-p", str(port), "wssproject.asgi:application"]
    process = psutil.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=log)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            http.client.HTTPConnection("127.0.0.1", port, timeout=1).request("GET", "/healthz")
            return port, process
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"daphne did not start on {port}")


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


class Api:
    """A persistent HTTP connection to one server's sessions API, with a bearer token."""

    def __init__(self, port: int, token: str) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    def post(self, session_id: str, data) -> int:
        body = json.dumps({"event": "bench", "data": data})
        self.connection.request("POST", f"/api/sessions/{session_id}/events", body, self.headers)
        response = self.connection.getresponse()
        payload = json.loads(response.read())
        if response.status != 202:
            raise RuntimeError(f"POST answered {response.status}: {payload}")
        return payload["seq"]


async def open_session(port: int) -> tuple[websockets.ClientConnection, str]:
    ws = await websockets.connect(f"ws://127.0.0.1:{port}/ws", open_timeout=30, max_queue=None)
    await ws.send(json.dumps({"type": "new_session", "workspace_dir": tempfile.gettempdir(), "resumable": True}))
    reply = json.loads(await asyncio.wait_for(ws.recv(), 30))
    return ws, reply["session_id"]


async def latency(ws, session_id: str, send, samples: int, label: str) -> dict[str, float]:
    """Time `send(session_id, n)` to the frame's arrival, `samples` times, one at a time.

    Also from the event's acceptance (its `sent_at`, read in the transaction, ms precision)
    to the frame's arrival: the delivery alone, without the sender's request and commit.
    """
    took, delivered = [], []
    for n in range(samples):
        started = time.perf_counter()
        await send(session_id, n)
        frame = json.loads(await asyncio.wait_for(ws.recv(), 30))
        took.append(time.perf_counter() - started)
        accepted_at = datetime.fromisoformat(frame["sent_at"].replace("Z", "+00:00")).timestamp()
        delivered.append(time.time() - accepted_at)
        if frame.get("data") != n:
            raise RuntimeError(f"unexpected frame {frame}")
    result = {
        "p50_ms": percentile(took, 0.5) * 1000,
        "p99_ms": percentile(took, 0.99) * 1000,
        "accepted_to_received_p50_ms": percentile(delivered, 0.5) * 1000,
        "accepted_to_received_p99_ms": percentile(delivered, 0.99) * 1000,
        "samples": samples,
    }
    progress(
        f"latency {label}: p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms; accepted to received "
        f"p50 {result['accepted_to_received_p50_ms']:.1f} ms, p99 {result['accepted_to_received_p99_ms']:.1f} ms "
        f"({samples} samples)"
    )
    return result


async def throughput(port: int, process: psutil.Popen, sessions: int, events: int, concurrency: int) -> dict:
    """Events sent from this process, `concurrency` transactions at once (each on its own thread and connection)."""
    from asgiref.sync import sync_to_async

    from sessions_app.delivery import event_deliver, event_record

    record = sync_to_async(event_record, thread_sensitive=False)

    opened = [await open_session(port) for _ in range(sessions)]
    received = 0
    done = asyncio.Event()

    async def reader(ws) -> None:
        nonlocal received
        async for _ in ws:
            received += 1
            if received >= events:
                done.set()

    readers = [asyncio.ensure_future(reader(ws)) for ws, _ in opened]
    queue: asyncio.Queue[int] = asyncio.Queue()
    for n in range(events):
        queue.put_nowait(n)

    async def sender() -> None:
        while not queue.empty():
            n = queue.get_nowait()
            session_id = uuid.UUID(opened[n % sessions][1])
            accepted = await record(session_id=session_id, event="bench", data=TYPICAL)
            await event_deliver(accepted)
            if n and n % 500 == 0:
                progress(f"throughput: {n} of {events} sent, {received} received")

    cpu_before = sum(process.cpu_times()[:2])
    started = time.perf_counter()
    await asyncio.gather(*(sender() for _ in range(concurrency)))
    await asyncio.wait_for(done.wait(), 60)
    elapsed = time.perf_counter() - started
    cpu = sum(process.cpu_times()[:2]) - cpu_before
    for task in readers:
        task.cancel()
    for ws, _ in opened:
        await ws.close()
    result = {
        "events": events,
        "sessions": sessions,
        "seconds": elapsed,
        "events_per_second_end_to_end": events / elapsed,
        "server_cpu_ms_per_event": cpu / events * 1000,
        "events_per_server_cpu_second": events / cpu if cpu else None,
    }
    progress(
        f"throughput: {events} events to {sessions} sessions in {elapsed:.2f} s = "
        f"{result['events_per_second_end_to_end']:.0f}/s end to end; "
        f"A spent {result['server_cpu_ms_per_event']:.3f} CPU ms per event "
        f"({result['events_per_server_cpu_second'] or 0:.0f} events per CPU second)"
    )
    return result


def window_cost(kept: int) -> dict:
    """Bytes PostgreSQL holds per kept event (table, index, TOAST), from a full window of TYPICAL events."""
    from django.db import connection

    from sessions_app.delivery import event_record
    from sessions_app.models import LiveSession, ServerInstance

    def size() -> int:
        with connection.cursor() as cursor:
            cursor.execute("VACUUM sessions_app_sessionevent")
            cursor.execute("SELECT pg_total_relation_size('sessions_app_sessionevent')")
            return cursor.fetchone()[0]

    instance = ServerInstance.objects.create(host="bench", pid=1)
    session = LiveSession.objects.create(workspace_dir="/tmp", instance=instance, channel_name="", resumable=True)
    before = size()
    started = time.perf_counter()
    for n in range(kept):
        event_record(session_id=session.pk, event="build.finished", data={**TYPICAL, "build": n})
        if n and n % 250 == 0:
            progress(f"window: {n} of {kept} events kept")
    ms_per_append = (time.perf_counter() - started) / kept * 1000
    per_event = (size() - before) / kept
    payload = len(json.dumps({**TYPICAL, "build": kept}))
    full = per_event * kept * 10_000
    progress(
        f"window: {per_event:.0f} bytes per kept event (data {payload} bytes as JSON); 10,000 sessions x {kept} "
        f"events = {full / 2**30:.2f} GiB; {ms_per_append:.2f} ms per kept append (one transaction each)"
    )
    session.delete()
    instance.delete()
    return {
        "bytes_per_event": per_event,
        "payload_json_bytes": payload,
        "kept": kept,
        "gib_for_10000_sessions": full / 2**30,
        "ms_per_append": ms_per_append,
    }


def redis_stream_cost(url: str, prefix: str, kept: int) -> dict:
    """The same appends to one Redis stream capped at `kept` entries: time per XADD, bytes per entry."""
    import redis

    client = redis.Redis.from_url(url)
    key = f"{prefix}:bench-stream:{uuid.uuid4()}"
    try:
        started = time.perf_counter()
        for n in range(kept):
            fields = {"event": "build.finished", "data": json.dumps({**TYPICAL, "build": n}), "sent_at": time.time()}
            client.xadd(key, fields, maxlen=kept, approximate=False)
        took = (time.perf_counter() - started) / kept * 1000
        per_entry = client.memory_usage(key, samples=0) / kept
    finally:
        client.delete(key)
        client.close()
    progress(f"redis stream: {took:.2f} ms per XADD, {per_entry:.0f} bytes per entry in memory")
    return {
        "ms_per_xadd": took,
        "bytes_per_entry": per_entry,
        "gib_for_10000_sessions": per_entry * kept * 10_000 / 2**30,
    }


async def main_async(args: argparse.Namespace) -> dict:
    from asgiref.sync import sync_to_async
    from django.contrib.auth.models import Permission, User
    from django.core.management import call_command

    from sessions_app.delivery import asend_session_event
    from sessions_app.tokens import token_create

    progress("migrating the bench database")
    await sync_to_async(call_command)("migrate", "--noinput", verbosity=0)

    def make_token() -> str:
        user = User.objects.create_user(f"bench-{uuid.uuid4().hex[:8]}")
        user.user_permissions.add(Permission.objects.get(codename="send_events_livesession"))
        return token_create(user=user, name="bench")[1]

    token = await sync_to_async(make_token)()
    env = {
        **os.environ,
        "WSS_SESSION_EVENT_RATE": "0",
        "WSS_LOG_LEVEL": "WARNING",
        "WSS_RATE_LIMIT": "0",
        "PYTHONUNBUFFERED": "1",
    }
    logs = Path(tempfile.mkdtemp(prefix="wss-bench-delivery-"))
    progress(f"starting daphne A and B (logs in {logs})")
    port_a, process_a = start_daphne(env, logs)
    port_b, process_b = start_daphne(env, logs)
    results: dict = {"note": "one run on a shared 2-core machine under other load; figures are indicative"}
    # First, while the table holds nothing else: its size grows by exactly the window.
    results["window"] = await sync_to_async(window_cost)(args.kept)
    try:
        ws, session_id = await open_session(port_a)
        api_a, api_b = Api(port_a, token), Api(port_b, token)

        async def via(api: Api):
            return lambda sid, n: asyncio.to_thread(api.post, sid, n)

        async def direct(sid: str, n: int) -> int:
            return await asend_session_event(session_id=sid, event="bench", data=n)

        results["latency_http_same_process"] = await latency(
            ws, session_id, await via(api_a), args.samples, "HTTP to A"
        )
        results["latency_http_across_processes"] = await latency(
            ws, session_id, await via(api_b), args.samples, "HTTP to B"
        )
        results["latency_python_other_process"] = await latency(
            ws, session_id, direct, args.samples, "asend_session_event() from this process"
        )
        await ws.close()
        results["throughput"] = await throughput(port_a, process_a, args.sessions, args.events, args.concurrency)
        results["redis_stream_alternative"] = await asyncio.to_thread(
            redis_stream_cost, args.redis_url, args.redis_prefix, args.kept
        )
    finally:
        for process in (process_a, process_b):
            process.terminate()
            process.wait(20)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.delivery", description=__doc__.splitlines()[0])
    parser.add_argument("--postgres-url", default="postgres://postgres@127.0.0.1:5432/wss_bench_delivery")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--redis-prefix", default="wss-bench-delivery")
    parser.add_argument("--samples", type=int, default=200, help="latency samples per path")
    parser.add_argument("--events", type=int, default=2000, help="events in the throughput run")
    parser.add_argument("--sessions", type=int, default=20, help="sessions the throughput run sends to")
    parser.add_argument("--concurrency", type=int, default=16, help="sends in flight in the throughput run")
    parser.add_argument("--kept", type=int, default=1000, help="events in the window whose size is measured")
    args = parser.parse_args(argv)
    for name, value in (("samples", args.samples), ("events", args.events), ("kept", args.kept)):
        if not 1 <= value <= 100_000:
            parser.error(f"--{name} must be between 1 and 100000")
    os.environ.update(
        DATABASE_URL=postgres_registry(args.postgres_url),
        REDIS_URL=args.redis_url,
        WSS_REDIS_PREFIX=args.redis_prefix,
        DATABASE_STATEMENT_TIMEOUT="60",
        WSS_SESSION_EVENT_RATE="0",  # this process sends too: no bound here either
        DJANGO_SETTINGS_MODULE="wssproject.settings",
    )
    import django

    django.setup()
    try:
        results = asyncio.run(main_async(args))
    finally:
        from django.db import connections

        connections.close_all()
        postgres_drop(args.postgres_url)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
