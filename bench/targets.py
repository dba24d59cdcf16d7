"""The servers under test: start them on free loopback ports, count their registries, watch them.

The project gets its own registry for the run (a fresh SQLite file, or a PostgreSQL
database the bench drops, creates and migrates) and its rows are counted directly; the
baselines answer GET /registry-count from their dicts.
"""

import atexit
import contextlib
import os
import resource
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psutil

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
ROW_TABLE = "sessions_app_livesession"
DEFAULT_POSTGRES_URL = "postgres://postgres@127.0.0.1:5432/wss_bench"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


# How each server is started: the production command (README), on a free loopback port.
# Access logs off and a deep backlog for every server, so the bench measures the same work.
SERVERS = ("daphne", "uvicorn-fast", "uvicorn", "uvicorn-websockets", "granian")


@dataclass(frozen=True)
class TargetSpec:
    """What to start: the project (on a server, database, layer and settings) or a baseline."""

    kind: str  # "project", "floor" (leanest Channels), "starlette" (Starlette + uvicorn) or "websockets"
    server: str = "daphne"  # one of SERVERS; Starlette runs under uvicorn, websockets is its own server
    db: str = "sqlite"  # project only: "sqlite" or "postgres"
    layer: str = "memory"  # project only: "memory" or "redis"
    settings: str = "bench"  # project only: "bench" (logs at WARNING) or "default" (INFO event lines)
    root: str = ""  # project only: another checkout to run (a before/after comparison); empty for this one

    @property
    def cwd(self) -> Path:
        return Path(self.root) if self.root else ROOT

    @property
    def label(self) -> str:
        if self.kind == "project":
            where = f" at {self.root}" if self.root else ""
            return f"project{where} ({self.server}, {self.db}, {self.layer} layer, {self.settings} settings)"
        if self.kind == "floor":
            return f"floor: leanest Channels, dict ({self.server})"
        if self.kind == "starlette":
            return "peer: Starlette + uvicorn, dict"
        return "baseline: bare websockets, dict"


@dataclass
class Target:
    """A running server and how to ask it about its registry."""

    spec: TargetSpec
    port: int
    process: subprocess.Popen
    log_path: Path
    cleanup: list = field(default_factory=list)
    database_url: str = ""

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def stats(self) -> psutil.Process:
        return psutil.Process(self.process.pid)

    def tree(self) -> list[psutil.Process]:
        """The server process and its children (granian serves from a worker process)."""
        try:
            return [self.stats, *self.stats.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def serving_pid(self) -> int:
        """The process that holds the connections: granian's worker, or the server itself."""
        tree = self.tree()
        return tree[-1].pid if tree else self.process.pid

    def registry_count(self) -> int:
        """How many sessions the server holds: rows for the project, the dict's size otherwise."""
        if self.spec.kind != "project":
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/registry-count", timeout=10) as response:
                return int(response.read())
        if self.database_url.startswith("sqlite"):
            with sqlite3.connect(urlsplit(self.database_url).path, timeout=20) as db:
                return db.execute(f"SELECT count(*) FROM {ROW_TABLE}").fetchone()[0]
        import psycopg

        with psycopg.connect(self.database_url, autocommit=True) as db:
            return db.execute(f"SELECT count(*) FROM {ROW_TABLE}").fetchone()[0]

    def cpu_seconds(self) -> float:
        """CPU used by the server's process tree so far."""
        return tree_cpu_seconds(self.tree())

    def rss(self) -> int:
        """Resident memory of the server's process tree."""
        return tree_rss(self.tree())

    def open_files_limit(self) -> int:
        return psutil.Process(self.serving_pid()).rlimit(psutil.RLIMIT_NOFILE)[0]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        for action in reversed(self.cleanup):
            action()


def raise_open_files_limit() -> int:
    """Raise this process's soft open-files limit to the hard one (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


_migrated_sqlite: dict[Path, Path] = {}


def sqlite_registry(workdir: Path, env: dict[str, str], root: Path) -> str:
    """A fresh, migrated SQLite file: migrated once per run and checkout, then copied."""
    path = workdir / "registry.sqlite3"
    template = _migrated_sqlite.get(root)
    if template is None or not template.exists():
        template = Path(tempfile.mkdtemp(prefix="wss-bench-template-")) / "registry.sqlite3"
        atexit.register(shutil.rmtree, template.parent, True)
        migrate(f"sqlite:///{template}", env, root)
        _migrated_sqlite[root] = template
    shutil.copyfile(template, path)
    return f"sqlite:///{path}"


def postgres_registry(url: str) -> str:
    """Drop and re-create the bench's PostgreSQL database (only the one named in `url`)."""
    import psycopg

    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    if not name or name in {"postgres", "template0", "template1"}:
        raise ValueError(f"refusing to recreate database {name!r}: give the bench its own database")
    maintenance = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(maintenance, autocommit=True) as db:
        db.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        db.execute(f'CREATE DATABASE "{name}"')
    return url


def postgres_drop(url: str) -> None:
    """Drop a database the bench made; a failure only leaves it behind."""
    import psycopg

    parts = urlsplit(url)
    with contextlib.suppress(psycopg.Error), psycopg.connect(urlunsplit(parts._replace(path="/postgres"))) as db:
        db.autocommit = True
        db.execute(f'DROP DATABASE IF EXISTS "{parts.path.lstrip("/")}" WITH (FORCE)')


def migrate(database_url: str, env: dict[str, str], root: Path) -> None:
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
        cwd=root,
        env={**env, "DATABASE_URL": database_url},
        check=True,
    )


def base_env(redis_url: str | None, settings: str = "bench") -> dict[str, str]:
    """The environment of every Django target: debug off; the bench settings also quiet the logs.

    "default" keeps the project's INFO event lines (three per session), as a deployment has them.
    The per-connection rate limit is off for both: it is policy, not machinery, `steady` sends
    back to back on purpose, and the baselines have no limit to compare against.
    """
    env = {
        **os.environ,
        "DJANGO_DEBUG": "false",
        "DJANGO_SECRET_KEY": "bench-only-secret-key-not-for-deployment-0123456789",
        "WSS_RATE_LIMIT": "0",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("WSS_LOG_LEVEL", None)
    if settings == "bench":
        env["WSS_LOG_LEVEL"] = "WARNING"
    env.pop("REDIS_URL", None)
    if redis_url:
        env["REDIS_URL"] = redis_url
    return env


def server_command(server: str, port: int, app: str) -> list[str]:
    """The production command line of `server` for `app` (README), on 127.0.0.1:port."""
    host, port_text = "127.0.0.1", str(port)
    if server == "daphne":
        return [str(BIN / "daphne"), "-v", "0", "-b", host, "-p", port_text, app]
    if server == "granian":
        return [
            str(BIN / "granian"),
            *GRANIAN_OPTIONS,
            "--host",
            host,
            "--port",
            port_text,
            "--log-level",
            "warning",
            "--backlog",
            "4096",
            app,
        ]
    uvicorn = [str(BIN / "uvicorn"), "--host", host, "--port", port_text, "--no-access-log", "--log-level", "warning"]
    if server == "uvicorn":  # uvicorn's defaults, as a user gets them (websockets, httptools, uvloop)
        return [*uvicorn, "--backlog", "4096", app]
    if server == "uvicorn-fast":
        return [*uvicorn, *UVICORN_FAST_OPTIONS, "--backlog", "4096", app]
    if server == "uvicorn-websockets":
        return [*uvicorn, *UVICORN_WEBSOCKETS_OPTIONS, "--backlog", "4096", app]
    raise ValueError(f"unknown server {server!r}")


# granian, measured but not supported (docs/performance.md): one worker, uvloop.
GRANIAN_OPTIONS = ["--interface", "asgi", "--loop", "uvloop", "--workers", "1", "--no-access-log"]
# The fast production command's options (README): uvicorn's Sans-I/O `websockets-sansio`
# protocol, httptools, uvloop; frames above twice WSS_MAX_MESSAGE_BYTES refused (1009) from
# their header, before they are read; no permessage-deflate (about 100 kB of zlib state per
# session a client could ask for). --timeout-graceful-shutdown caps what could still hold
# uvicorn's shutdown once the lifecycle's stop has closed every connection.
UVICORN_FAST_OPTIONS = [
    "--ws",
    "websockets-sansio",
    "--http",
    "httptools",
    "--loop",
    "uvloop",
    "--ws-max-size",
    "131072",
    "--ws-per-message-deflate",
    "false",
    "--timeout-graceful-shutdown",
    "5",
]
# The same on uvicorn's older `websockets` protocol, the fast command until 2026-12-07:
# measured beside it (docs/performance.md).
UVICORN_WEBSOCKETS_OPTIONS = ["--ws", "websockets", *UVICORN_FAST_OPTIONS[2:]]


def target_start(
    spec: TargetSpec,
    *,
    postgres_url: str = DEFAULT_POSTGRES_URL,
    redis_url: str = DEFAULT_REDIS_URL,
    cpus: set[int] | None = None,
) -> Target:
    """Start one target on a free port, with a fresh registry for the project; wait for TCP.

    `cpus` pins the server (and the processes it spawns) to those cores.
    """
    workdir = Path(tempfile.mkdtemp(prefix="wss-bench-"))
    cleanup = [lambda: shutil.rmtree(workdir, ignore_errors=True)]
    env = base_env(redis_url if spec.kind == "project" and spec.layer == "redis" else None, spec.settings)
    database_url = f"sqlite:///{workdir / 'unused.sqlite3'}"
    if spec.kind == "project" and spec.db == "postgres":
        # A database per project target (server, settings, checkout), so their registries stay apart.
        suffix = f"_{spec.server}_{spec.settings}".replace("-", "_") + ("_before" if spec.root else "")
        parts = urlsplit(postgres_url)
        database_url = postgres_registry(urlunsplit(parts._replace(path=parts.path + suffix)))
        cleanup.append(lambda: postgres_drop(database_url))
        migrate(database_url, env, spec.cwd)
    elif spec.kind == "project":
        database_url = sqlite_registry(workdir, env, spec.cwd)
    env["DATABASE_URL"] = database_url
    port = free_port()
    if spec.kind == "websockets":
        command = [sys.executable, "-m", "bench.baseline_websockets", "--port", str(port)]
    elif spec.kind == "starlette":
        command = server_command("uvicorn", port, "bench.baseline_starlette:application")
    else:
        app = "wssproject.asgi:application" if spec.kind == "project" else "bench.baseline_channels:application"
        command = server_command(spec.server, port, app)
    log_path = workdir / "server.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            command,
            cwd=spec.cwd,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
        )
    target = Target(spec=spec, port=port, process=process, log_path=log_path, cleanup=cleanup)
    target.database_url = database_url if spec.kind == "project" else ""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log = target.log()
            target.stop()
            raise RuntimeError(f"{spec.label} exited early:\n{log}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return target
        except OSError:
            time.sleep(0.1)
    target.stop()
    raise RuntimeError(f"{spec.label} did not listen on port {port} within 60 s")


def tree_cpu_seconds(processes: list[psutil.Process]) -> float:
    """User plus system CPU seconds of these processes (those gone meanwhile count 0)."""
    total = 0.0
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = process.cpu_times()
            total += times.user + times.system
    return total


def tree_rss(processes: list[psutil.Process]) -> int:
    """Resident memory of these processes, in bytes (those gone meanwhile count 0)."""
    total = 0
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += process.memory_info().rss
    return total
