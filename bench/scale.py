"""`python -m bench.scale` (`make bench-scale`): 50,000 live sessions on one machine, then a mass drop.

Three server processes share one PostgreSQL registry and one Redis channel layer. Every
process here may hold at most 20,000 open files (a hard limit), so the load is spread: the
sessions go round-robin over the servers, and the generator runs as several processes, each
with its own loopback source address (127.0.0.2, 127.0.0.3, ...: only 127.0.0.0/8 is ever
used), so no process nears the limit and no source address runs out of ports. Measured:
the time to establish every session, the servers' memory per session, that the registry
holds exactly one row per session while they are held, and the time for it to drain to 0
after every client's TCP connection is aborted at once (no close frames).

    python -m bench.scale                             # 50,000 sessions (what `make bench-scale` runs)
    python -m bench.scale --sessions 600 --clients 2  # a smoke run, seconds
"""

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from multiprocessing.connection import Connection, wait
from pathlib import Path

import psutil
from tqdm import tqdm

from .targets import (
    DEFAULT_POSTGRES_URL,
    DEFAULT_REDIS_URL,
    ROOT,
    ROW_TABLE,
    SERVERS,
    base_env,
    free_port,
    migrate,
    postgres_drop,
    postgres_registry,
    raise_open_files_limit,
    server_command,
    tree_cpu_seconds,
    tree_rss,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=50_000, help="live sessions to hold, in all")
    parser.add_argument("--servers", type=int, default=3, help="server processes")
    parser.add_argument("--server", choices=SERVERS, default="uvicorn-fast", help="which server")
    parser.add_argument("--clients", type=int, default=4, help="load generator processes (one source address each)")
    parser.add_argument("--concurrency", type=int, default=64, help="handshakes in flight per generator process")
    parser.add_argument("--settings", choices=["default", "bench"], default="bench", help="project settings")
    parser.add_argument("--timeout", type=float, default=300, help="seconds to establish, and again to drain")
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES_URL, help="re-created for the run, dropped after")
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL, help="the channel layer (a prefix of its own)")
    parser.add_argument("--json", type=Path, help="write the figures here (default bench/results/scale-<time>.json)")
    args = parser.parse_args(argv)
    if not 1 <= args.clients <= 200:
        parser.error("--clients must be 1..200 (one loopback source address each, 127.0.0.2 upwards)")
    return args


# --- the generator processes --------------------------------------------------------------------


def client_main(pipe: Connection, urls: list[str], source: str, count: int, concurrency: int, timeout: float) -> None:
    """One generator process: open `count` sessions from `source`, report, hold, abort them all on "drop"."""
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(client_run(pipe, urls, source, count, concurrency, timeout))


async def client_run(pipe: Connection, urls: list[str], source: str, count: int, concurrency: int, timeout: float):
    from websockets.asyncio.client import connect

    from .loadgen import CLIENT_OPTIONS, TRANSPORT_ERRORS, new_session_frame

    workspace = tempfile.mkdtemp(prefix="wss-scale-workspace-")
    held, errors, opened = [], {}, 0
    numbers = iter(range(count))
    last_report = time.monotonic()

    async def opener() -> None:
        nonlocal opened, last_report
        for number in numbers:
            url = urls[number % len(urls)]
            try:
                ws = await connect(url, local_addr=(source, 0), max_queue=4, **CLIENT_OPTIONS)
                held.append(ws)
                await ws.send(new_session_frame(workspace, number))
                reply = json.loads(await ws.recv())
                kind = "ok" if reply.get("type") == "new_session" else reply.get("code", "bad_reply")
            except TRANSPORT_ERRORS as error:
                kind = type(error).__name__
            if kind == "ok":
                opened += 1
            else:
                errors[kind] = errors.get(kind, 0) + 1
            if time.monotonic() - last_report > 0.5:
                last_report = time.monotonic()
                pipe.send(("progress", opened, sum(errors.values())))

    try:
        async with asyncio.timeout(timeout):
            await asyncio.gather(*(opener() for _ in range(concurrency)))
    except TimeoutError:
        errors["establish_timeout"] = errors.get("establish_timeout", 0) + 1
    pipe.send(("established", opened, errors))
    # Hold until told to drop (or the parent goes away), then abort every TCP connection at once.
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, pipe_poll, pipe, timeout * 4)
    for ws in held:
        ws.transport.abort()
    pipe.send(("dropped", len(held)))
    await asyncio.sleep(0.5)


def pipe_poll(pipe: Connection, timeout: float) -> None:
    with contextlib.suppress(EOFError, OSError):
        if pipe.poll(timeout):
            pipe.recv()


# --- the servers -------------------------------------------------------------------------------


class Servers:
    """N server processes on one PostgreSQL registry and one Redis layer prefix."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.workdir = Path(tempfile.mkdtemp(prefix="wss-scale-"))
        self.processes: list[subprocess.Popen] = []
        self.ports: list[int] = []
        self.database_url = args.postgres_url

    def start(self) -> None:
        env = base_env(self.args.redis_url, self.args.settings)
        env["WSS_REDIS_PREFIX"] = f"wss-scale-{os.getpid()}"
        postgres_registry(self.database_url)
        migrate(self.database_url, env, ROOT)
        env["DATABASE_URL"] = self.database_url
        for number in range(self.args.servers):
            port = free_port()
            log = (self.workdir / f"server-{number}.log").open("wb")
            command = server_command(self.args.server, port, "wssproject.asgi:application")
            process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
            self.processes.append(process)
            self.ports.append(port)
        deadline = time.monotonic() + 60
        for process, port in zip(self.processes, self.ports, strict=True):
            while not self.listening(port):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"server on {port} did not start; logs in {self.workdir}")
                time.sleep(0.1)

    @staticmethod
    def listening(port: int) -> bool:
        import socket

        with socket.socket() as sock:
            sock.settimeout(0.2)
            return sock.connect_ex(("127.0.0.1", port)) == 0

    @property
    def urls(self) -> list[str]:
        return [f"ws://127.0.0.1:{port}/ws" for port in self.ports]

    def tree(self) -> list[psutil.Process]:
        found = []
        for process in self.processes:
            with contextlib.suppress(psutil.NoSuchProcess):
                found += [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
        return found

    def rss(self) -> int:
        return tree_rss(self.tree())

    def cpu_seconds(self) -> float:
        return tree_cpu_seconds(self.tree())

    def open_files_limits(self) -> list[int]:
        return [process.rlimit(psutil.RLIMIT_NOFILE)[0] for process in self.tree()]

    def registry_count(self) -> tuple[int, int]:
        """(live session rows, server instance rows)."""
        import psycopg

        with psycopg.connect(self.database_url, autocommit=True) as db:
            sessions = db.execute(f"SELECT count(*) FROM {ROW_TABLE}").fetchone()[0]
            instances = db.execute("SELECT count(*) FROM sessions_app_serverinstance").fetchone()[0]
            return sessions, instances

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        postgres_drop(self.database_url)


# --- the run -----------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict:
    limit = raise_open_files_limit()
    per_client = -(-args.sessions // args.clients)
    per_server = -(-args.sessions // args.servers)
    for what, count in (("generator process", per_client), ("server process", per_server)):
        if count + 200 > limit:
            raise SystemExit(f"{count} connections per {what} would pass the open-files limit {limit}: add processes")
    servers = Servers(args)
    print(f"starting {args.servers} x {args.server} on PostgreSQL and Redis", file=sys.stderr)
    servers.start()
    context = multiprocessing.get_context("spawn")
    clients, pipes = [], []
    figures: dict = {"sessions_asked": args.sessions, "servers": args.servers, "clients": args.clients}
    try:
        time.sleep(1.0)  # let the servers settle before the baseline memory reading
        rss_before, cpu_before = servers.rss(), servers.cpu_seconds()
        started = time.monotonic()
        for number in range(args.clients):
            count = min(per_client, args.sessions - number * per_client)
            ours, theirs = context.Pipe()
            source = f"127.0.0.{2 + number}"
            process = context.Process(
                target=client_main,
                args=(theirs, servers.urls, source, count, args.concurrency, args.timeout),
                daemon=True,
            )
            process.start()
            clients.append(process)
            pipes.append(ours)
        established, errors = establish(pipes, args)
        figures["establish_s"] = time.monotonic() - started
        figures["server_cpu_s_establishing"] = servers.cpu_seconds() - cpu_before
        time.sleep(min(5.0, 1 + args.sessions / 20_000))  # let the servers' allocators settle
        rss_after = servers.rss()
        rows, instances = servers.registry_count()
        figures.update(
            sessions=established,
            errors=errors,
            registry_while_held=rows,
            instances=instances,
            rss_before=rss_before,
            rss_after=rss_after,
            bytes_per_session=(rss_after - rss_before) / max(established, 1),
            server_open_files_limits=servers.open_files_limits(),
        )
        print(f"held {established:,} sessions; registry holds {rows:,} rows ({instances} instances)", file=sys.stderr)
        dropped = time.monotonic()
        for pipe in pipes:
            pipe.send("drop")
        remaining = rows
        bar = tqdm(total=rows, desc="drain: registry rows removed", unit="", file=sys.stderr, mininterval=0.5)
        while time.monotonic() - dropped < args.timeout:
            remaining, _ = servers.registry_count()
            bar.n = rows - remaining
            bar.refresh()
            if remaining == 0:
                break
            time.sleep(0.1)
        bar.close()
        figures.update(drain_s=time.monotonic() - dropped, registry_after=remaining)
    finally:
        for pipe in pipes:
            with contextlib.suppress(OSError):
                pipe.send("drop")
        for process in clients:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
        servers.stop()
    figures["exact"] = figures.get("registry_while_held") == figures.get("sessions") == args.sessions
    return figures


def establish(pipes: list[Connection], args: argparse.Namespace) -> tuple[int, dict]:
    """Follow the generator processes until each has opened its share (or given up); (opened, errors)."""
    progress = {pipe: (0, 0) for pipe in pipes}
    done: dict = {}
    bar = tqdm(total=args.sessions, desc="establish", unit="", file=sys.stderr, mininterval=0.5)
    deadline = time.monotonic() + args.timeout + 30
    while len(done) < len(pipes) and time.monotonic() < deadline:
        for pipe in wait([p for p in pipes if p not in done], timeout=1.0):
            try:
                message = pipe.recv()
            except EOFError:
                done[pipe] = (progress[pipe][0], {"generator_died": 1})
                continue
            if message[0] == "progress":
                progress[pipe] = (message[1], message[2])
            elif message[0] == "established":
                progress[pipe] = (message[1], sum(message[2].values()))
                done[pipe] = (message[1], message[2])
        bar.n = sum(opened for opened, _ in progress.values())
        bar.set_postfix(errors=sum(failed for _, failed in progress.values()))
        bar.refresh()
    bar.close()
    errors: dict = {}
    for _, kinds in done.values():
        for kind, count in kinds.items():
            errors[kind] = errors.get(kind, 0) + count
    if len(done) < len(pipes):
        errors["generator_timeout"] = len(pipes) - len(done)
    return sum(opened for opened, _ in done.values()), errors


def report(args: argparse.Namespace, figures: dict) -> str:
    errors = sum(figures.get("errors", {}).values())
    lines = [
        f"\n### scale: {args.sessions:,} live sessions over {args.servers} x {args.server} "
        f"({args.settings} settings), PostgreSQL registry, Redis layer; {args.clients} generator processes\n",
        "| sessions | errors | establish s | sessions/s | bytes/session | registry while held | drain s "
        "| registry after |",
        "|---|---|---|---|---|---|---|---|",
        f"| {figures.get('sessions', 0):,} | {errors} | {figures.get('establish_s', 0):.1f} | "
        f"{figures.get('sessions', 0) / max(figures.get('establish_s', 1), 1e-9):,.0f} | "
        f"{figures.get('bytes_per_session', 0):,.0f} | {figures.get('registry_while_held', '-'):,} | "
        f"{figures.get('drain_s', float('nan')):.1f} | {figures.get('registry_after', '-')} |",
        "",
        f"targets: 0 errors: {'yes' if errors == 0 else 'NO'}; registry exact while held: "
        f"{'yes' if figures.get('exact') else 'NO'}; drained to 0 in under 30 s: "
        f"{'yes' if figures.get('registry_after') == 0 and figures.get('drain_s', 99) < 30 else 'NO'}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = datetime.now(UTC)
    figures = run(args)
    print(report(args, figures), flush=True)
    path = args.json or ROOT / "bench" / "results" / f"scale-{started:%Y%m%dT%H%M%SZ}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"when": started.isoformat(timespec="seconds"), "argv": sys.argv[1:], "loadavg": os.getloadavg()}
    path.write_text(json.dumps({"meta": meta, **figures}, indent=2, default=str))
    print(f"figures written to {path}", file=sys.stderr)
    ok = not figures.get("errors") and figures.get("exact") and figures.get("registry_after") == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
