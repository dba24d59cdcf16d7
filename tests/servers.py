"""Real server processes for tests: daphne, uvicorn, uvicorn-fast (the fast production command) on a free port.

WSS_TEST_SERVER=uvicorn-websockets (or another name below: granian too, measured but not
supported) starts every server process of the run under that server instead, to try a
candidate on the whole live suite.
"""

import asyncio
import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import psutil
from django.db import connection

from bench.targets import (  # the commands' options, in one place
    GRANIAN_OPTIONS,
    UVICORN_FAST_OPTIONS,
    UVICORN_WEBSOCKETS_OPTIONS,
)

if TYPE_CHECKING:
    from sessions_app.models import ServerInstance

    from .proxy import TcpProxy

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

# Beat and reap every second, declare a peer dead after 5 s: a crash is reaped within 6 s.
FAST_HEARTBEAT, FAST_TIMEOUT = 1, 5
FAST_ENV = {"WSS_HEARTBEAT_SECONDS": str(FAST_HEARTBEAT), "WSS_INSTANCE_TIMEOUT_SECONDS": str(FAST_TIMEOUT)}

# The heartbeat of the servers the `proxied_server` fixture starts (their registry behind a TcpProxy).
PROXIED_HEARTBEAT = 1.0


# A stop's documented duration (docs/operations.md, "Stop timing"): the close handshakes are
# given CLOSE_HANDSHAKE_SECONDS (2 s); uvicorn then waits for the application's tasks, up to
# the fast command's --timeout-graceful-shutdown (5 s; the default command's tasks end at once).
GRACEFUL_SHUTDOWN = float(UVICORN_FAST_OPTIONS[UVICORN_FAST_OPTIONS.index("--timeout-graceful-shutdown") + 1])
STOP_SECONDS = {"daphne": 2.0, "uvicorn": 2.0 + GRACEFUL_SHUTDOWN, "uvicorn-fast": 2.0 + GRACEFUL_SHUTDOWN}


# The variables that configure the service; a "fresh" environment has none of them.
CONFIG_PREFIXES = ("DJANGO_", "WSS_", "DATABASE_", "REDIS_")


def bare_environment(**extra: str) -> dict[str, str]:
    """This process's environment without any setting of the service, plus `extra`."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(CONFIG_PREFIXES)}
    return {**env, **extra}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def dead_pid() -> int:
    """A pid that ran a moment ago and runs no more."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def run_cli(*args: str) -> subprocess.Popen:
    """The client's command line (python -m sessions_app.client ARGS), its output piped as text."""
    return subprocess.Popen(
        [sys.executable, "-m", "sessions_app.client", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def instance_of(server: "ServerProcess") -> "ServerInstance | None":
    """The registry row of a server process (None once it is gone)."""
    from sessions_app.models import ServerInstance  # models load after Django is set up

    return await ServerInstance.objects.filter(pid=server.serving_pid).afirst()


async def session_ids() -> set[str]:
    """The id of every session row in the registry, as strings."""
    from sessions_app.models import LiveSession

    return {str(pk) async for pk in LiveSession.objects.values_list("pk", flat=True)}


async def row_ids_equal(expected: set[str]) -> bool:
    """Whether the registry's session rows are exactly `expected` (ids as strings)."""
    return await session_ids() == expected


def suite_database_url() -> str:
    """A URL for the database pytest-django created, so a server process shares it."""
    params = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{params['NAME']}"
    user = params.get("USER") or "postgres"
    host = params.get("HOST") or "127.0.0.1"
    port = params.get("PORT") or 5432
    return f"postgres://{user}@{host}:{port}/{params['NAME']}"


class ServerExitedEarly(RuntimeError):
    """A server process ended before it listened: its exit status and its log."""

    def __init__(self, server: str, returncode: int, log: str) -> None:
        super().__init__(f"{server} exited early with status {returncode}:\n{log}")
        self.returncode, self.log = returncode, log


def database_url_via(proxy: "TcpProxy") -> str:
    """The test database's URL with its connections run through `proxy` (a TcpProxy in front of it)."""
    params = connection.settings_dict
    return f"postgres://{params.get('USER') or 'postgres'}@127.0.0.1:{proxy.port}/{params['NAME']}"


def redis_url_via(proxy: "TcpProxy", redis_url: str) -> str:
    """`redis_url` with its connections run through `proxy`."""
    return f"redis://127.0.0.1:{proxy.port}{urlsplit(redis_url).path}"


@dataclass
class ServerProcess:
    """A server subprocess with its port and log file."""

    port: int
    process: subprocess.Popen
    log_path: Path
    extra: dict = field(default_factory=dict)
    server: str = "daphne"

    @property
    def serving_pid(self) -> int:
        """The process that holds the connections and the registry row: granian's worker, or the server itself."""
        if self.server != "granian":
            return self.process.pid
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            children = psutil.Process(self.process.pid).children()
            if children:
                return children[0].pid
            time.sleep(0.05)
        raise RuntimeError(f"granian {self.process.pid} started no worker within 30 s")

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def assert_no_traceback(self) -> None:
        """The server logged no exception it did not handle (the failure shows the lines around it)."""
        log = self.log()
        assert "Traceback" not in log, log[max(0, log.index("Traceback") - 500) :][:3000]

    def get(self, path: str, *, source: str = "127.0.0.1", headers: dict | None = None) -> tuple[int, object]:
        """GET `path` from the loopback address `source`: the status and the body (parsed if JSON)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30, source_address=(source, 0))
        try:
            conn.request("GET", path, headers=headers or {})
            response = conn.getresponse()
            body = response.read().decode()
            is_json = response.getheader("Content-Type", "").startswith("application/json")
            return response.status, json.loads(body) if is_json else body
        finally:
            conn.close()

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def stacks(self) -> str:
        """The process's signal masks (/proc) and every thread's Python stack (py-spy), for a failure message."""
        if self.process.poll() is not None:
            return f"(exited with {self.process.returncode})"
        dump = subprocess.run(
            [str(BIN / "py-spy"), "dump", "--pid", str(self.serving_pid)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        signals = "".join(line + "\n" for line in status.splitlines() if line.startswith(("Sig", "ShdPnd")))
        return signals + dump.stdout + dump.stderr

    def wait(self, timeout: float = 20) -> int:
        return self.process.wait(timeout=timeout)

    def stop(self) -> None:
        if self.server == "granian":
            # The whole group: its worker holds the database connections, and outlives a killed main process.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        elif self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)


def start_server(
    log_dir: Path,
    *,
    server: str = "daphne",
    env: dict[str, str] | None = None,
    args: list[str] | None = None,
    port: int | None = None,
    application: str = "wssproject.asgi:application",
) -> ServerProcess:
    """Start a server on `port` (default: a free one) against the test database; wait until it accepts TCP."""
    server = os.environ.get("WSS_TEST_SERVER") or server
    port = port or free_port()
    full_env = {**os.environ, "DATABASE_URL": suite_database_url(), "PYTHONUNBUFFERED": "1", **(env or {})}
    if server == "daphne":
        command = [
            str(BIN / "daphne"),
            "-b",
            "127.0.0.1",
            "-p",
            str(port),
            *(args or []),
            application,
        ]
    elif server in {"uvicorn", "uvicorn-fast", "uvicorn-websockets"}:
        named = {"uvicorn-fast": UVICORN_FAST_OPTIONS, "uvicorn-websockets": UVICORN_WEBSOCKETS_OPTIONS}
        options = named.get(server, [])
        command = [
            str(BIN / "uvicorn"),
            *options,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            *(args or []),
            application,
        ]
    elif server == "granian":
        command = [
            str(BIN / "granian"),
            *GRANIAN_OPTIONS,
            *("--host", "127.0.0.1", "--port", str(port)),
            *(args or []),
            application,
        ]
    else:
        raise ValueError(server)
    log_path = log_dir / f"{server}-{port}-{time.monotonic_ns()}.log"  # a restart on the same port keeps both logs
    with log_path.open("wb") as log_file:
        # granian in a process group of its own, so that stop() reaches its worker too.
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=full_env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=server == "granian",
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerExitedEarly(server, process.returncode, log_path.read_text(errors="replace"))
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return ServerProcess(port=port, process=process, log_path=log_path, server=server)
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"{server} did not listen on {port} within 30 s:\n{log_path.read_text(errors='replace')}")


class RedisServer:
    """A throwaway redis-server of our own on a loopback port, without persistence: a restart loses its data.

    For the faults that need Redis itself to stop; never the machine's shared Redis.
    """

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited at once (port {self.port} taken?)")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not listen on {self.port} within 10 s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


def post_event_sync(server: ServerProcess, token: str, session_id: str, body: dict) -> tuple[int, dict, Message]:
    """POST /api/sessions/<id>/events on a real server with a bearer token: status, JSON body, headers.

    The headers keep their case-insensitive lookup: granian sends their names in lower case.
    """
    request = urllib.request.Request(
        f"{server.http_url}/api/sessions/{session_id}/events",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read()), response.headers
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}"), error.headers


async def post_event(server: ServerProcess, token: str, session_id: str, data, event: str = "tick") -> int:
    """Send one event through a real server's API, off the event loop; its seq (the answer must be 202)."""
    status, body, _ = await asyncio.to_thread(
        post_event_sync, server, token, session_id, {"event": event, "data": data}
    )
    assert status == 202, (status, body)
    return body["seq"]
