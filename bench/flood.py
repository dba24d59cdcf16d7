"""`python -m bench.flood`: how much one flooding client makes a server hold (docs/security.md).

Starts the project under daphne or uvicorn on a fresh SQLite registry, opens one
connection, sends `new_session` while the registry is locked (so the consumer waits, as
on a slow database), floods `--frames` text frames of `--size` bytes, and samples the
server's RSS (psutil) until the lock is released and the connection ends. Loopback only,
bounded in frames and time.

    python -m bench.flood --server daphne --frames 200 --size 524288
    python -m bench.flood --server daphne --held 1000     # instead: RSS per held session (the inbox's cost)
"""

import argparse
import asyncio
import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import websockets

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
MIB = 1024 * 1024


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(server: str, database: Path, port: int, env: dict[str, str]) -> subprocess.Popen:
    """The server process, once it accepts TCP."""
    if server == "daphne":
        command = [str(BIN / "daphne"), "-b", "127.0.0.1", "-p", str(port), "wssproject.asgi:application"]
    else:
        command = [str(BIN / "uvicorn"), "--host", "127.0.0.1", "--port", str(port), "wssproject.asgi:application"]
    full_env = {**os.environ, "DATABASE_URL": f"sqlite:///{database}", "WSS_LOG_LEVEL": "WARNING", **env}
    process = subprocess.Popen(command, cwd=ROOT, env=full_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import socket

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return process
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"{server} did not start")


class RssSampler(threading.Thread):
    """Samples a process's RSS every 20 ms; keeps the peak."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.peak = self.process.memory_info().rss
        self.running = True

    def run(self) -> None:
        while self.running:
            try:
                self.peak = max(self.peak, self.process.memory_info().rss)
            except psutil.Error:
                return
            time.sleep(0.02)


async def flood(url: str, *, frames: int, size: int, workspace: str) -> dict:
    """One connection: new_session (held up by the registry lock), then `frames` frames; what came back."""
    payload = json.dumps({"type": "new_session", "workspace_dir": workspace, "pad": "x" * max(size - 80, 0)})
    sent = replies = 0
    close_code = ended_by = None
    try:
        async with websockets.connect(url, max_size=None, open_timeout=10, close_timeout=2) as ws:
            await ws.send(json.dumps({"type": "new_session", "workspace_dir": workspace}))
            for _ in range(frames):
                await asyncio.wait_for(ws.send(payload), 10)
                sent += 1
            while True:
                await asyncio.wait_for(ws.recv(), 15)
                replies += 1
    except (websockets.ConnectionClosed, TimeoutError) as error:
        close_code = getattr(getattr(error, "rcvd", None), "code", None)
        ended_by = repr(error)
    return {"sent": sent, "replies": replies, "close_code": close_code, "ended_by": ended_by}


def registry_lock(database: Path) -> sqlite3.Connection:
    """Hold SQLite's write lock, so the registry writer waits (up to its 20 s busy timeout)."""
    connection = sqlite3.connect(database, isolation_level=None, timeout=5)
    connection.execute("BEGIN IMMEDIATE")
    return connection


@contextlib.contextmanager
def fresh_server(server: str, env: dict[str, str]) -> Iterator[tuple[str, str, Path, subprocess.Popen]]:
    """A server on a new, migrated SQLite registry: scratch folder, URL, database, process; killed after."""
    with tempfile.TemporaryDirectory() as scratch:
        database = Path(scratch) / "db.sqlite3"
        subprocess.run(
            [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
            cwd=ROOT,
            env={**os.environ, "DATABASE_URL": f"sqlite:///{database}"},
            check=True,
        )
        port = free_port()
        process = start(server, database, port, env)
        try:
            yield scratch, f"ws://127.0.0.1:{port}/ws", database, process
        finally:
            process.kill()
            process.wait()


async def measure(server: str, *, frames: int, size: int, hold: float, env: dict[str, str]) -> dict:
    with fresh_server(server, env) as (scratch, url, database, process):
        async with websockets.connect(url) as warm:  # one session first: every code path loaded
            await warm.send(json.dumps({"type": "new_session", "workspace_dir": scratch}))
            await warm.recv()
        await asyncio.sleep(0.5)
        baseline = psutil.Process(process.pid).memory_info().rss
        sampler = RssSampler(process.pid)
        sampler.start()
        lock = registry_lock(database)
        asyncio.get_running_loop().call_later(hold, lock.rollback)
        started = time.monotonic()
        result = await flood(url, frames=frames, size=size, workspace=scratch)
        seconds = time.monotonic() - started
        sampler.running = False
        sampler.join()
        return {
            "server": server,
            "frames": frames,
            "frame_bytes": size,
            "flood_mib": round(frames * size / MIB, 1),
            "rss_before_mib": round(baseline / MIB, 1),
            "rss_peak_growth_mib": round((sampler.peak - baseline) / MIB, 1),
            "seconds": round(seconds, 1),
            **result,
        }


async def measure_held(server: str, *, held: int, env: dict[str, str]) -> dict:
    """RSS growth for `held` connections each holding a session (what the inbox costs when idle)."""
    with fresh_server(server, env) as (scratch, url, _database, process):

        async def hold() -> websockets.ClientConnection:
            ws = await websockets.connect(url, open_timeout=30)
            await ws.send(json.dumps({"type": "new_session", "workspace_dir": scratch}))
            await ws.recv()
            return ws

        connections = []
        try:
            connections += [await hold() for _ in range(20)]  # warm
            await asyncio.sleep(1)
            before = psutil.Process(process.pid).memory_info().rss
            for _ in range(0, held, 50):
                connections += await asyncio.gather(*(hold() for _ in range(50)))
            await asyncio.sleep(2)
            growth = psutil.Process(process.pid).memory_info().rss - before
            return {
                "server": server,
                "held": held,
                "rss_growth_mib": round(growth / MIB, 1),
                "kib_per_session": round(growth / held / 1024, 1),
            }
        finally:
            for ws in connections:
                await ws.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", choices=["daphne", "uvicorn"], default="daphne")
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--size", type=int, default=512 * 1024, help="bytes per frame")
    parser.add_argument("--hold", type=float, default=6.0, help="seconds the registry stays locked")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the server, repeatable")
    parser.add_argument("--held", type=int, default=0, help="instead of a flood: hold this many sessions")
    args = parser.parse_args()
    env = dict(item.split("=", 1) for item in args.env)
    if args.held:
        print(json.dumps(asyncio.run(measure_held(args.server, held=args.held, env=env))))
        return
    print(json.dumps(asyncio.run(measure(args.server, frames=args.frames, size=args.size, hold=args.hold, env=env))))


if __name__ == "__main__":
    main()
