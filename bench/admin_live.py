"""`python -m bench.admin_live`: what the admin's live channel costs the server, and the churn beside it.

Starts the project under daphne on a fresh registry (SQLite + in-memory layer, or
PostgreSQL + Redis), logs an operator in over HTTP, and measures on loopback:

- idle: server CPU with `--pages` admin changelists watching `--held` sessions and nothing changing,
  against none (each page is re-rendered every WSS_HEARTBEAT_SECONDS for its ages);
- relayed changes: server CPU and bytes per registry change per watching page, one change at a time
  (the CPU with the pages minus the CPU of the same changes without them);
- churn: sessions per second, `--rounds` times without an admin page and with one watching
  the changelist, alternating; the frames that page received, and how many per second.

Bounded in sessions, pages and time; a progress line on stderr for each step.

    python -m bench.admin_live                                     # SQLite, in-memory layer
    python -m bench.admin_live --db postgres --layer redis --sessions 3000 --rounds 3
"""

import argparse
import asyncio
import http.cookiejar
import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

from websockets.asyncio.client import ClientConnection, connect

from . import loadgen
from .targets import (
    BIN,
    DEFAULT_POSTGRES_URL,
    DEFAULT_REDIS_URL,
    ROOT,
    Target,
    TargetSpec,
    base_env,
    raise_open_files_limit,
    target_start,
)

USERNAME, PASSWORD = "bench-operator", "bench-operator-password"
CHANGELIST = "/admin/sessions_app/livesession/"


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def operator_create(target: Target, redis_url: str | None) -> None:
    env = {
        **base_env(redis_url),
        "DATABASE_URL": target.database_url,
        "DJANGO_SUPERUSER_PASSWORD": PASSWORD,
    }
    subprocess.run(
        [
            str(BIN / "python"),
            "manage.py",
            "createsuperuser",
            "--noinput",
            "--username",
            USERNAME,
            "--email",
            "operator@example.com",
        ],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
    )


def operator_cookie(target: Target) -> str:
    """Log in to the admin over HTTP, as a browser does; the Cookie header of the session."""
    cookies = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(cookies))
    base = f"http://127.0.0.1:{target.port}"
    opener.open(base + "/admin/login/", timeout=30).read()
    csrf = next(cookie.value for cookie in cookies if cookie.name == "csrftoken")
    fields = {"username": USERNAME, "password": PASSWORD, "next": "/admin/", "csrfmiddlewaretoken": csrf}
    opener.open(base + "/admin/login/", data=urllib.parse.urlencode(fields).encode(), timeout=30).read()
    return "; ".join(f"{cookie.name}={cookie.value}" for cookie in cookies)


class Page:
    """One watching admin changelist: its live channel, and what it received."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.frames = 0
        self.bytes = 0
        self.reader = asyncio.get_running_loop().create_task(self.read())

    async def read(self) -> None:
        async for frame in self.ws:
            self.frames += 1
            self.bytes += len(frame)

    async def close(self) -> None:
        await self.ws.close()
        await asyncio.gather(self.reader, return_exceptions=True)


async def page_open(target: Target, cookie: str) -> Page:
    ws = await connect(
        f"ws://127.0.0.1:{target.port}/admin/live/",
        additional_headers={"Cookie": cookie, "Origin": f"http://127.0.0.1:{target.port}"},
        **loadgen.CLIENT_OPTIONS,
    )
    await ws.send(json.dumps({"type": "watch", "page": "changelist", "model": "livesession", "query": ""}))
    page = Page(ws)
    deadline = time.monotonic() + 10
    while page.frames == 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return page


async def cpu_over(target: Target, seconds: float) -> float:
    """Server CPU seconds used over `seconds` of wall time."""
    before = target.cpu_seconds()
    await asyncio.sleep(seconds)
    return target.cpu_seconds() - before


async def idle_cost(target: Target, cookie: str, *, pages: int, seconds: float) -> dict:
    say(f"idle: {seconds:g} s without a page, then {seconds:g} s with {pages} pages watching")
    without = await cpu_over(target, seconds)
    opened = [await page_open(target, cookie) for _ in range(pages)]
    with_pages = await cpu_over(target, seconds)
    for page in opened:
        await page.close()
    return {
        "cpu_pct_without": 100 * without / seconds,
        "cpu_pct_with": 100 * with_pages / seconds,
        "cpu_ms_per_page_per_s": 1000 * (with_pages - without) / seconds / pages,
    }


async def relay_cpu(target: Target, cookie: str, workspace: str, *, pages: int, changes: int) -> tuple[float, int, int]:
    """Sessions opened and closed one at a time, far enough apart to be a push each: CPU s, frames, bytes."""
    say(f"relay: {changes} sessions opened and closed one at a time, {pages} pages watching")
    opened = [await page_open(target, cookie) for _ in range(pages)]
    frames_before = sum(page.frames for page in opened)
    bytes_before = sum(page.bytes for page in opened)
    started_cpu = target.cpu_seconds()
    for number in range(changes):
        ws, _ = await loadgen.open_session(target.url, workspace, number)
        await asyncio.sleep(0.6)
        await ws.close()
        await asyncio.sleep(0.6)
    cpu = target.cpu_seconds() - started_cpu
    frames = sum(page.frames for page in opened) - frames_before
    received = sum(page.bytes for page in opened) - bytes_before
    for page in opened:
        await page.close()
    say(f"  {frames} frames, {received} bytes, {cpu:.2f} CPU s")
    return cpu, frames, received


async def relay_cost(target: Target, cookie: str, workspace: str, *, pages: int, changes: int) -> dict:
    """What each relayed change costs per watching page: the CPU with pages minus the CPU without."""
    without, _, _ = await relay_cpu(target, cookie, workspace, pages=0, changes=changes)
    with_pages, frames, received = await relay_cpu(target, cookie, workspace, pages=pages, changes=changes)
    return {
        "changes": 2 * changes,  # each session is an open and a close
        "frames": frames,
        "bytes_per_frame": received / frames if frames else 0,
        "cpu_ms_per_change_per_page": 1000 * (with_pages - without) / (2 * changes) / pages,
    }


async def sessions_hold(target: Target, workspace: str, count: int) -> list[ClientConnection]:
    """`count` sessions held open, so a watching page has rows to render."""
    say(f"holding {count} sessions")
    return [(await loadgen.open_session(target.url, workspace, number))[0] for number in range(count)]


async def churn_pair(target: Target, cookie: str, workspace: str, *, sessions: int, concurrency: int, rounds: int):
    rates: dict[str, list[float]] = {"none": [], "one page": []}
    cpu_us: dict[str, list[float]] = {"none": [], "one page": []}  # server CPU per churned session
    pushes: list[tuple[int, int, float]] = []
    for round_number in range(rounds):
        for mode in ("none", "one page"):
            page = await page_open(target, cookie) if mode == "one page" else None
            frames_before = page.frames if page else 0
            cpu_before = target.cpu_seconds()
            figures = await loadgen.churn(
                target.url,
                workspace=workspace,
                sessions=sessions,
                concurrency=concurrency,
                timeout=300,
                desc=f"churn round {round_number + 1}/{rounds}, admin page: {mode}",
            )
            rates[mode].append(figures.rate)
            cpu_us[mode].append(1e6 * (target.cpu_seconds() - cpu_before) / max(figures.count, 1))
            say(
                f"  round {round_number + 1} {mode}: {figures.rate:.0f} sessions/s, "
                f"{cpu_us[mode][-1]:.0f} us server CPU per session, errors {dict(figures.errors)}"
            )
            if page is not None:
                await asyncio.sleep(1.5)  # the last push after the churn
                pushes.append((page.frames - frames_before, page.bytes, figures.elapsed))
                await page.close()
    return rates, cpu_us, pushes


async def main(args: argparse.Namespace) -> None:
    raise_open_files_limit()
    redis_url = args.redis_url if args.layer == "redis" else None
    spec = TargetSpec(kind="project", server="daphne", db=args.db, layer=args.layer, settings="bench")
    say(f"starting {spec.label}")
    target = target_start(spec, postgres_url=args.postgres_url, redis_url=args.redis_url)
    try:
        operator_create(target, redis_url)
        cookie = operator_cookie(target)
        with tempfile.TemporaryDirectory(prefix="wss-bench-ws-") as workspace:
            held = await sessions_hold(target, workspace, args.held)
            idle = await idle_cost(target, cookie, pages=args.pages, seconds=args.idle_seconds)
            relay = await relay_cost(target, cookie, workspace, pages=args.pages, changes=args.changes)
            for ws in held:
                await ws.close()
            rates, cpu_us, pushes = await churn_pair(
                target, cookie, workspace, sessions=args.sessions, concurrency=args.concurrency, rounds=args.rounds
            )
    finally:
        target.stop()
    none, one = statistics.median(rates["none"]), statistics.median(rates["one page"])
    frames_per_s = [frames / elapsed for frames, _, elapsed in pushes if elapsed]
    print(
        f"target: {spec.label}; {args.pages} pages over {args.held} held sessions; "
        f"churn {args.sessions} sessions x {args.rounds} rounds"
    )
    print(
        f"idle server CPU: {idle['cpu_pct_without']:.2f} % without a page, {idle['cpu_pct_with']:.2f} % with "
        f"{args.pages} -> {idle['cpu_ms_per_page_per_s']:.2f} ms CPU per page per second"
    )
    print(
        f"relayed change: {relay['cpu_ms_per_change_per_page']:.2f} ms server CPU per change per page, "
        f"{relay['bytes_per_frame']:.0f} bytes per frame ({relay['frames']} frames for {relay['changes']} changes "
        f"x {args.pages} pages)"
    )
    print(f"churn, no admin page: {', '.join(f'{r:.0f}' for r in rates['none'])} sessions/s (median {none:.0f})")
    print(f"churn, one admin page: {', '.join(f'{r:.0f}' for r in rates['one page'])} sessions/s (median {one:.0f})")
    print(f"  -> with the page: {100 * (one - none) / none:+.1f} % sessions/s")
    cpu_none, cpu_one = statistics.median(cpu_us["none"]), statistics.median(cpu_us["one page"])
    print(
        f"server CPU per churned session: {cpu_none:.0f} us without a page, {cpu_one:.0f} us with one "
        f"({100 * (cpu_one - cpu_none) / cpu_none:+.1f} %)"
    )
    print(
        "  the watching page received "
        + ", ".join(f"{f} frames in {e:.1f} s" for f, _, e in pushes)
        + f" (at most {max(frames_per_s, default=0):.1f} frames/s)"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.admin_live", description=__doc__.splitlines()[0])
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--layer", choices=["memory", "redis"], default="memory")
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES_URL)
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL)
    parser.add_argument("--pages", type=int, default=10, help="watching pages for the idle and relay figures")
    parser.add_argument("--held", type=int, default=50, help="sessions held open: the rows the pages show")
    parser.add_argument("--idle-seconds", type=float, default=15)
    parser.add_argument("--changes", type=int, default=8, help="sessions opened and closed one at a time")
    parser.add_argument("--sessions", type=int, default=2000, help="sessions per churn run")
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
