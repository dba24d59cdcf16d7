"""`python -m bench`: run the scenarios on the project and its baselines, print tables with ratios.

    python -m bench                          # the default set (what `make bench` runs)
    python -m bench --quick                  # a tiny version, seconds
    python -m bench --scenarios churn --db sqlite,postgres --servers uvicorn-fast --layer redis
    python -m bench --scenarios churn --servers daphne --settings bench --baselines floor --profile /tmp/churn.txt
    python -m bench --scenarios churn --before /tmp/main   # also the project from another checkout

Every target is started in the same run: the project under each server at its default
settings and at the bench settings, the leanest Channels consumer (the floor) and Starlette
+ uvicorn (the peer a user would pick instead). Ratios are against those two, and the
issue's targets are checked at the end: absolute figures depend on the machine, ratios much less.
"""

import argparse
import asyncio
import atexit
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from . import loadgen, profile
from .targets import (
    DEFAULT_POSTGRES_URL,
    DEFAULT_REDIS_URL,
    ROOT,
    SERVERS,
    Target,
    TargetSpec,
    raise_open_files_limit,
    target_start,
)

# The production server this project recommends for speed (README), and the one it keeps.
FAST_SERVER = "uvicorn-fast"
CLASSIC_SERVER = "daphne"

COMMON_COLUMNS = [
    ("errors", "errors"),
    ("registry after", "registry_after"),
    ("server CPU %", "server_cpu_pct"),
    ("bench CPU %", "bench_cpu_pct"),
]
QUICK = {
    "sessions": 200,
    "concurrency": 20,
    "rounds": 1,
    "hold_sessions": 200,
    "steady_connections": 10,
    "steady_messages": 1000,
    "warmup": 20,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description="Benchmark the session service.")
    parser.add_argument("--scenarios", default="churn,steady,hold", help="comma-separated: churn, steady, hold")
    parser.add_argument(
        "--servers", default=f"{CLASSIC_SERVER},{FAST_SERVER}", help=f"project servers, comma-separated: {SERVERS}"
    )
    parser.add_argument("--settings", default="default,bench", help="project settings: default (INFO logs), bench")
    parser.add_argument(
        "--floor-servers",
        default=f"{CLASSIC_SERVER},{FAST_SERVER}",
        help="servers for the floor baseline (the leanest Channels consumer), comma-separated",
    )
    parser.add_argument("--db", default="sqlite", help="project registries for churn/steady: sqlite,postgres")
    parser.add_argument("--hold-db", choices=["sqlite", "postgres"], default="sqlite", help="project registry for hold")
    parser.add_argument("--layer", choices=["memory", "redis"], default="memory", help="project channel layer")
    parser.add_argument(
        "--baselines", default="floor,starlette", help="comma-separated: floor, starlette, websockets; or 'none'"
    )
    parser.add_argument(
        "--no-pin", dest="pin", action="store_false", help="do not pin servers to core 0 and the generator to core 1"
    )
    parser.add_argument("--sessions", type=int, default=3000, help="churn: sessions per round (S)")
    parser.add_argument("--concurrency", type=int, default=50, help="churn and hold: concurrent clients (C)")
    parser.add_argument(
        "--rounds", type=int, default=3, help="churn and steady: rounds, interleaved across targets; medians"
    )
    parser.add_argument("--hold-sessions", type=int, default=8000, help="hold: live sessions (K)")
    parser.add_argument("--steady-connections", type=int, default=50, help="steady: open sessions (C)")
    parser.add_argument("--steady-messages", type=int, default=20000, help="steady: messages in all")
    parser.add_argument("--warmup", type=int, default=200, help="churn sessions on each server before measuring")
    parser.add_argument("--timeout", type=float, default=120, help="seconds any one measurement may take")
    parser.add_argument("--quick", action="store_true", help="tiny counts: a smoke run in seconds")
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES_URL, help="dropped, re-created and migrated")
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL, help="for --layer redis")
    parser.add_argument(
        "--before",
        help="also run the project as it was: a checkout's directory, or a git revision of this repository",
    )
    parser.add_argument(
        "--client-compression",
        choices=["none", "deflate"],
        default="none",
        help="whether the generator's clients offer permessage-deflate (the websockets client's own default)",
    )
    parser.add_argument("--profile", type=Path, help="py-spy the project server during its first churn round")
    parser.add_argument("--json", type=Path, help="write every figure here (default bench/results/<time>.json)")
    args = parser.parse_args(argv)
    if args.quick:
        for name, value in QUICK.items():
            if parser.get_default(name) == getattr(args, name):
                setattr(args, name, value)
    args.scenarios = [s for s in args.scenarios.split(",") if s]
    args.db = [d for d in args.db.split(",") if d]
    args.servers = [server for server in args.servers.split(",") if server]
    args.settings = [name for name in args.settings.split(",") if name]
    args.floor_servers = [server for server in args.floor_servers.split(",") if server]
    for server in [*args.servers, *args.floor_servers]:
        if server not in SERVERS:
            parser.error(f"unknown server {server!r}")
    if args.before and not Path(args.before).is_dir():
        args.before_revision, args.before = args.before, str(checkout_of(args.before))
    for name in args.settings:
        if name not in {"default", "bench"}:
            parser.error(f"unknown settings {name!r}")
    args.baselines = [] if args.baselines == "none" else [b for b in args.baselines.split(",") if b]
    for name in args.scenarios:
        if name not in {"churn", "steady", "hold"}:
            parser.error(f"unknown scenario {name!r}")
    return args


class Bench:
    """One run: starts targets, runs scenarios, keeps the figures, prints the tables."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.workspace = tempfile.mkdtemp(prefix="wss-bench-workspace-")
        self.results: dict[str, list[dict]] = {}
        self.tables: list[str] = []

    def specs(self, dbs: list[str]) -> list[TargetSpec]:
        a = self.args
        roots = ["", a.before] if a.before else [""]
        found = [
            TargetSpec("project", server, db, a.layer, settings, root)
            for root in roots
            for server in a.servers
            for settings in a.settings
            for db in dbs
        ]
        if "floor" in a.baselines:
            found += [TargetSpec("floor", server) for server in a.floor_servers]
        if "starlette" in a.baselines:
            found.append(TargetSpec("starlette", "uvicorn"))
        if "websockets" in a.baselines:
            found.append(TargetSpec("websockets", "websockets"))
        return found

    def start(self, specs: list[TargetSpec]) -> list[Target]:
        started = []
        cpus = {0} if self.args.pin else None
        try:
            for spec in specs:
                print(f"starting {spec.label}", file=sys.stderr)
                started.append(
                    target_start(spec, postgres_url=self.args.postgres_url, redis_url=self.args.redis_url, cpus=cpus)
                )
        except BaseException:
            for target in started:
                target.stop()
            raise
        return started

    async def warm_up(self, target: Target) -> None:
        if self.args.warmup:
            concurrency = min(self.args.concurrency, self.args.warmup)
            await self.measured(target, loadgen.churn, "warm-up", sessions=self.args.warmup, concurrency=concurrency)

    async def registry_settles(self, target: Target, timeout: float = 30) -> tuple[int, float]:
        """Poll until the registry is empty; (what is left, seconds waited)."""
        started = time.perf_counter()
        while True:
            count = await asyncio.to_thread(target.registry_count)
            if count == 0 or time.perf_counter() - started > timeout:
                return count, time.perf_counter() - started
            await asyncio.sleep(0.05)

    async def measured(self, target: Target, scenario, desc: str, **options) -> tuple[loadgen.Figures, dict]:
        """Run a loadgen scenario on the target; with the server's and the bench's CPU (% of one core)."""
        server_cpu, own_cpu = target.cpu_seconds(), time.process_time()
        label = f"{desc} {target.spec.label}"
        figures = await scenario(target.url, workspace=self.workspace, timeout=self.args.timeout, desc=label, **options)
        wall = figures.elapsed or 1e-9
        usage = {
            "server_cpu_pct": 100 * (target.cpu_seconds() - server_cpu) / wall,
            "bench_cpu_pct": 100 * (time.process_time() - own_cpu) / wall,
        }
        return figures, usage

    async def churn_and_steady(self) -> None:
        targets = self.start(self.specs(self.args.db))
        try:
            for target in targets:
                await self.warm_up(target)
            if "churn" in self.args.scenarios:
                await self.churn(targets)
            if "steady" in self.args.scenarios:
                await self.steady(targets)
        finally:
            for target in targets:
                target.stop()

    async def churn(self, targets: list[Target]) -> None:
        a = self.args
        rounds: dict[str, list[dict]] = {t.spec.label: [] for t in targets}
        for number in range(a.rounds):
            for target in targets:
                recorder = None
                if a.profile and number == 0 and target is targets[0]:
                    recorder = profile.record_start(target.process.pid, a.profile)
                    await asyncio.sleep(1.0)
                figures, usage = await self.measured(
                    target,
                    loadgen.churn,
                    f"churn {number + 1}/{a.rounds}",
                    sessions=a.sessions,
                    concurrency=a.concurrency,
                )
                if recorder:
                    profile.record_stop(recorder)
                left, settle = await self.registry_settles(target)
                rounds[target.spec.label].append(
                    {
                        "sessions_per_s": figures.rate,
                        "p50_ms": figures.percentile_ms(50),
                        "p99_ms": figures.percentile_ms(99),
                        "errors": dict(figures.errors),
                        "registry_after": left,
                        "settle_s": settle,
                        **usage,
                    }
                )
        rows = []
        for target in targets:
            runs = rounds[target.spec.label]
            row = {
                **identity(target.spec),
                "sessions_per_s": statistics.median(r["sessions_per_s"] for r in runs),
                "p50_ms": statistics.median(r["p50_ms"] for r in runs),
                "p99_ms": statistics.median(r["p99_ms"] for r in runs),
                "errors": sum(sum(r["errors"].values()) for r in runs),
                "registry_after": max(r["registry_after"] for r in runs),
                "server_cpu_pct": statistics.median(r["server_cpu_pct"] for r in runs),
                # CPU per session reads the same on a busy machine, where a contended core lowers the rate.
                "server_cpu_us": statistics.median(cpu_us_per(r["server_cpu_pct"], r["sessions_per_s"]) for r in runs),
                "bench_cpu_pct": statistics.median(r["bench_cpu_pct"] for r in runs),
                "rounds": runs,
            }
            rows.append(row)
        self.results["churn"] = rows
        self.table(
            f"churn: {a.sessions} sessions x {a.rounds} rounds at concurrency {a.concurrency} (medians)",
            [
                ("sessions/s", "sessions_per_s"),
                ("p50 ms", "p50_ms"),
                ("p99 ms", "p99_ms"),
                *COMMON_COLUMNS,
                ("server CPU µs/session", "server_cpu_us"),
            ],
            ratios=[("sessions/s", "sessions_per_s")],
            rows=rows,
        )
        if a.profile:
            print(f"\nprofile of {targets[0].spec.label} (raw stacks in {a.profile}):\n", flush=True)
            print(profile.summarize(a.profile), flush=True)
            print(f"\nwhere a session's CPU goes, {targets[0].spec.label}:\n", flush=True)
            print(profile.features_table(a.profile, rows[0]["server_cpu_us"]), flush=True)

    async def steady(self, targets: list[Target]) -> None:
        a = self.args
        rounds: dict[str, list[dict]] = {t.spec.label: [] for t in targets}
        # Rounds interleaved across targets, as churn's: one pass per target moved by up to
        # a third between identical builds on this machine.
        for number in range(a.rounds):
            for target in targets:
                figures, usage = await self.measured(
                    target,
                    loadgen.steady,
                    f"steady {number + 1}/{a.rounds}",
                    connections=a.steady_connections,
                    messages=a.steady_messages,
                )
                left, _ = await self.registry_settles(target)
                rounds[target.spec.label].append(
                    {
                        "messages_per_s": figures.rate,
                        "server_cpu_us": cpu_us_per(usage["server_cpu_pct"], figures.rate),
                        "p50_ms": figures.percentile_ms(50),
                        "p99_ms": figures.percentile_ms(99),
                        "errors": dict(figures.errors),
                        "registry_after": left,
                        **usage,
                    }
                )
        rows = []
        for target in targets:
            runs = rounds[target.spec.label]
            error_kinds: dict[str, int] = {}
            for run in runs:
                for kind, count in run["errors"].items():
                    error_kinds[kind] = error_kinds.get(kind, 0) + count
            rows.append(
                {
                    **identity(target.spec),
                    **{
                        key: statistics.median(run[key] for run in runs)
                        for key in ("messages_per_s", "server_cpu_us", "p50_ms", "p99_ms")
                    },
                    "errors": sum(error_kinds.values()),
                    "error_kinds": error_kinds,
                    "registry_after": max(run["registry_after"] for run in runs),
                    "server_cpu_pct": statistics.median(run["server_cpu_pct"] for run in runs),
                    "bench_cpu_pct": statistics.median(run["bench_cpu_pct"] for run in runs),
                    "rounds": runs,
                }
            )
        self.results["steady"] = rows
        self.table(
            f"steady: {a.steady_messages} messages over {a.steady_connections} open sessions x {a.rounds} rounds "
            "(a repeated new_session, answered session_exists; medians)",
            [
                ("messages/s", "messages_per_s"),
                ("p50 ms", "p50_ms"),
                ("p99 ms", "p99_ms"),
                *COMMON_COLUMNS,
                ("server CPU µs/message", "server_cpu_us"),
            ],
            ratios=[("messages/s", "messages_per_s")],
            rows=rows,
        )

    async def hold(self) -> None:
        a = self.args
        rows = []
        for spec in self.specs([a.hold_db]):
            (target,) = self.start([spec])
            try:
                await self.warm_up(target)
                limit = target.open_files_limit()
                if limit < a.hold_sessions + 100:
                    print(f"warning: {spec.label} may open only {limit} files", file=sys.stderr)
                figures, usage = await self.measured(
                    target,
                    loadgen.hold,
                    "hold",
                    sessions=a.hold_sessions,
                    concurrency=a.concurrency,
                    rss=target.rss,
                    registry_count=target.registry_count,
                )
            finally:
                target.stop()
            row = {
                **identity(spec),
                "sessions": figures.count,
                "establish_s": figures.elapsed,
                "bytes_per_session": figures.extra["bytes_per_session"],
                "drain_s": figures.extra["drain_seconds"],
                "errors": sum(figures.errors.values()),
                "error_kinds": dict(figures.errors),
                "registry_after": figures.extra["registry_after"],
                "server_open_files_limit": limit,
                **figures.extra,
                **usage,
            }
            rows.append(row)
        self.results["hold"] = rows
        self.table(
            f"hold: {a.hold_sessions} live sessions, then every TCP connection aborted at once",
            [
                ("sessions", "sessions"),
                ("establish s", "establish_s"),
                ("bytes/session", "bytes_per_session"),
                ("drain s", "drain_s"),
                *COMMON_COLUMNS,
            ],
            ratios=[("bytes/session", "bytes_per_session"), ("drain", "drain_s")],
            rows=rows,
        )

    def find(
        self, scenario: str, kind: str, server: str = "", settings: str = "", *, before: bool = False
    ) -> dict | None:
        """The first row of `scenario` for that kind of target (and server and settings, for the project)."""
        for row in self.results.get(scenario, []):
            same_server = not server or row["server"] == server
            same_version = row.get("before", False) is before
            if row["kind"] == kind and same_server and same_version and (not settings or row["settings"] == settings):
                return row
        return None

    def targets_check(self) -> list[dict]:
        """The issue's targets, as ratios within this run; printed as a table, each held or not."""
        checks = []

        def check(name: str, value: float | None, bound: float, *, at_most: bool = False, unit: str = "x") -> None:
            if value is None:
                return
            held = value <= bound if at_most else value >= bound
            shown = f"{value:.2f}{unit}" if unit == "x" else f"{value:,.0f} {unit}"
            target = f"{'<=' if at_most else '>='} {bound:g}{unit if unit == 'x' else ' ' + unit}"
            checks.append({"target": name, "measured": shown, "bound": target, "held": held})

        def of(scenario, key, kind, server="", settings="", *, before=False):
            row = self.find(scenario, kind, server, settings, before=before)
            return None if row is None else row[key]

        def divided(a, b):
            return a / b if a is not None and b else None

        churn, steady = "sessions_per_s", "messages_per_s"
        slow, fast = CLASSIC_SERVER, FAST_SERVER
        for server in self.args.servers:
            check(
                f"{server}, default settings: churn vs the floor on {server}",
                divided(of("churn", churn, "project", server, "default"), of("churn", churn, "floor", server)),
                0.9,
            )
            check(
                f"{server}, default settings: churn p99",
                of("churn", "p99_ms", "project", server, "default"),
                250,
                at_most=True,
                unit="ms",
            )
            for settings in self.args.settings:
                # A change costs no more than 5 % against the project as it was (`--before`).
                for scenario, key, at_most in (
                    ("churn", churn, False),
                    ("steady", steady, False),
                    ("hold", "bytes_per_session", True),
                ):
                    check(
                        f"{server}, {settings} settings: {scenario} {key.replace('_', ' ')} vs before",
                        divided(
                            of(scenario, key, "project", server, settings),
                            of(scenario, key, "project", server, settings, before=True),
                        ),
                        1.05 if at_most else 0.95,
                        at_most=at_most,
                    )
        check(
            f"{fast}, default settings: churn vs Starlette + uvicorn",
            divided(of("churn", churn, "project", fast, "default"), of("churn", churn, "starlette")),
            1.5,
        )
        check(
            f"{fast}, default settings: steady vs Starlette + uvicorn",
            divided(of("steady", steady, "project", fast, "default"), of("steady", steady, "starlette")),
            1.0,
        )
        check(
            f"{fast}, default settings: bytes per held session vs {slow}'s",
            divided(
                of("hold", "bytes_per_session", "project", fast, "default"),
                of("hold", "bytes_per_session", "project", slow, "default"),
            ),
            1.5,
            at_most=True,
        )
        for server in self.args.servers:
            check(
                f"{server}: churn at default settings (INFO logs) vs bench settings (WARNING)",
                divided(
                    of("churn", churn, "project", server, "default"), of("churn", churn, "project", server, "bench")
                ),
                0.95,
            )
            check(
                f"{server}: server CPU per churned session, default settings vs bench settings",
                divided(
                    of("churn", "server_cpu_us", "project", server, "default"),
                    of("churn", "server_cpu_us", "project", server, "bench"),
                ),
                1.05,
                at_most=True,
            )
        if checks:
            lines = [
                "\n### targets (ratios within this run)\n",
                "| target | measured | bound | held |",
                "|---|---|---|---|",
            ]
            lines += [
                f"| {c['target']} | {c['measured']} | {c['bound']} | {'yes' if c['held'] else 'NO'} |" for c in checks
            ]
            text = "\n".join(lines)
            self.tables.append(text)
            print(text, flush=True)
        return checks

    def table(self, title, columns, *, ratios, rows) -> None:
        """Print a Markdown table; ratio columns per (label, key) against each floor and the peer, if run."""
        floors = len([row for row in rows if row["kind"] == "floor"])
        bases = [
            (f"{name} ({row['server']})" if kind == "floor" and floors > 1 else name, row)
            for name, kind in BASES
            for row in rows
            if row["kind"] == kind
        ]
        headers = ["target", *(header for header, _ in columns)]
        headers += [f"{label} vs {name}" for label, _ in ratios for name, _ in bases]
        lines = [f"\n### {title}\n", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        for row in rows:
            cells = [row["target"], *(row[key] for _, key in columns)]
            cells += [ratio(row[key], base[key]) for _, key in ratios for _, base in bases]
            lines.append("| " + " | ".join(fmt(cell) for cell in cells) + " |")
        text = "\n".join(lines)
        self.tables.append(text)
        print(text, flush=True)

    async def run(self) -> dict:
        a = self.args
        limit = raise_open_files_limit()
        if a.pin and len(os.sched_getaffinity(0)) > 1:
            os.sched_setaffinity(0, {1})  # the servers get core 0 (targets.target_start)
        if "hold" in a.scenarios and limit < a.hold_sessions + 100:
            print(f"warning: the bench may open only {limit} files", file=sys.stderr)
        started = time.perf_counter()
        if a.before:
            print(f"before: {getattr(a, 'before_revision', a.before)} (from {a.before})", file=sys.stderr)
        if {"churn", "steady"} & set(a.scenarios):
            await self.churn_and_steady()
        if "hold" in a.scenarios:
            await self.hold()
        self.results["targets"] = self.targets_check()
        meta = {
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
            "argv": sys.argv[1:],
            "seconds": round(time.perf_counter() - started, 1),
            "open_files_limit": limit,
        }
        print(f"\n{meta['seconds']} s in all", flush=True)
        return {"meta": meta, "args": {k: str(v) for k, v in vars(a).items()}, **self.results}


BASES = [("floor", "floor"), ("Starlette", "starlette")]


def identity(spec: TargetSpec) -> dict:
    """The fields that name a target in every row."""
    return {
        "target": spec.label,
        "kind": spec.kind,
        "server": spec.server,
        "settings": spec.settings,
        "before": bool(spec.root),
    }


def checkout_of(revision: str) -> Path:
    """This repository's tree at `revision`, exported into a temporary directory (removed at exit)."""
    directory = Path(tempfile.mkdtemp(prefix="wss-bench-before-"))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    archive = subprocess.run(["git", "archive", revision], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(directory)], input=archive, check=True)
    return directory


def cpu_us_per(cpu_pct: float, rate: float) -> float:
    """Server CPU microseconds per operation, from its CPU share and the operations per second."""
    return 1e4 * cpu_pct / rate if rate else float("nan")


def ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}x" if base else ""


def fmt(value) -> str:
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    loadgen.CLIENT_OPTIONS["compression"] = None if args.client_compression == "none" else args.client_compression
    try:
        import uvloop

        results = uvloop.run(Bench(args).run())
    except ImportError:
        results = asyncio.run(Bench(args).run())
    path = args.json or ROOT / "bench" / "results" / f"bench-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, default=str))
    print(f"figures written to {path}", file=sys.stderr)
    return results


def failures(results: dict) -> list[str]:
    """Targets that had errors or left sessions in their registry: the run fails on them."""
    return [
        f"{scenario}: {row['target']} (errors {row['errors']}, registry after {row['registry_after']})"
        for scenario in ("churn", "steady", "hold")
        for row in results.get(scenario, [])
        if row["errors"] or row["registry_after"]
    ]


if __name__ == "__main__":
    failed = failures(main())
    for line in failed:
        print(f"FAILED {line}", file=sys.stderr)
    sys.exit(1 if failed else 0)
