"""Shared fixtures: workspaces, communicators through the real ASGI app, live servers."""

import logging
import os
import signal
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import websockets.asyncio.connection
from channels.testing import WebsocketCommunicator

from .frames import check_server_frame
from .servers import FAST_ENV, ServerProcess, start_server

if TYPE_CHECKING:
    from sessions_app.process import ProcessState


def pytest_configure(config) -> None:
    """Let the servers the tests start take SIGINT, however the suite itself was started.

    A non-interactive shell starts a background job (`make test &`) with SIGINT ignored,
    and an ignored signal stays ignored across exec: every server would inherit it, and
    the tests that stop one with SIGINT would wait on a server that never heard it. With
    Python's own handler here instead, a child starts with the default, as from a terminal.
    """
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def server_frames_match_the_schema(monkeypatch) -> None:
    """Validate every frame a test reads from the server against docs/asyncapi.yaml.

    Wraps WebsocketCommunicator.receive_output (under receive_from and receive_json_from)
    and the websockets client's recv (under `async for` too), so tests need do nothing.
    """
    receive_output = WebsocketCommunicator.receive_output
    recv = websockets.asyncio.connection.Connection.recv

    async def checked_receive_output(self, timeout=1):
        message = await receive_output(self, timeout)
        if message.get("type") == "websocket.send":
            frame = message["text"] if message.get("text") is not None else message["bytes"]
            check_server_frame(frame, path=self.scope["path"])
        return message

    async def checked_recv(self, decode=None):
        frame = await recv(self, decode)
        # decode=False hands text frames over as bytes: check them as the text they were.
        check_server_frame(
            frame.decode() if decode is False else frame, path=getattr(self.request, "path", None) or "/ws"
        )
        return frame

    monkeypatch.setattr(WebsocketCommunicator, "receive_output", checked_receive_output)
    monkeypatch.setattr(websockets.asyncio.connection.Connection, "recv", checked_recv)


@pytest.fixture(autouse=True)
def app_logs_reach_caplog(monkeypatch) -> None:
    """settings.LOGGING stops sessions_app records at their own handler; caplog listens on the root."""
    monkeypatch.setattr(logging.getLogger("sessions_app"), "propagate", True)


@pytest.fixture(autouse=True)
def channel_layer_of_its_own() -> Iterator[None]:
    """Each test gets a channel layer instance of its own, as each server process has.

    Each test runs on an event loop of its own, and a layer instance keeps receive state
    bound to the loop that used it: channels-redis's receive lock and per-channel cleanup
    locks, the in-memory layer's queues. A test that ends while one of its consumers is
    inside `receive` leaves that state held, and the next test's consumer on the same
    instance fails ("bound to a different event loop", "Two event loops are trying to
    receive()") or waits forever. A server process has one loop, so this is the tests' own.
    """
    from channels.layers import channel_layers

    channel_layers.backends.pop("default", None)
    yield
    channel_layers.backends.pop("default", None)


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """An existing directory to open sessions on."""
    path = tmp_path / "workspace"
    path.mkdir()
    return path


@pytest.fixture
async def communicator() -> AsyncIterator[WebsocketCommunicator]:
    """A connected WebsocketCommunicator on /ws through wssproject.asgi.application."""
    from .communicators import connect

    comm = await connect()
    yield comm
    await comm.disconnect()


@pytest.fixture
async def fresh_process(monkeypatch) -> AsyncIterator["ProcessState"]:
    """A fresh process state: a new boot id, neither registered nor started; whatever a test starts ends with it."""
    from sessions_app import connections, process

    state = process.ProcessState()
    monkeypatch.setattr(process, "_state", state)
    monkeypatch.setattr(connections, "CLOSE_HANDSHAKE_SECONDS", 0.2)
    yield state
    await state.aclose()


@pytest.fixture
def staff_user(django_user_model) -> Callable:
    """Make a staff user named `name` holding the permissions named by `codenames` (password "pw")."""
    from django.contrib.auth.models import Permission

    def make(name: str, *codenames: str):
        user = django_user_model.objects.create_user(name, password="pw", is_staff=True)
        user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
        return user

    return make


@pytest.fixture
def instance_with_sessions() -> Callable:
    """Make a ServerInstance whose last heartbeat was `age` seconds ago, with one session row per workspace.

    `sessions=N` is N rows on /tmp. Returns the instance and its rows, in order.
    """
    from django.utils import timezone

    from sessions_app.models import LiveSession, ServerInstance

    def make(
        *, sessions: int = 0, workspaces: Sequence[str] = (), age: float = 0, host: str = "elsewhere", pid: int = 1
    ) -> tuple[ServerInstance, list[LiveSession]]:
        instance = ServerInstance.objects.create(
            host=host, pid=pid, heartbeat_at=timezone.now() - timedelta(seconds=age)
        )
        rows = [
            LiveSession(workspace_dir=path, channel_name=f"c{n}", client_addr="127.0.0.1:1", instance=instance)
            for n, path in enumerate(list(workspaces) or ["/tmp"] * sessions)
        ]
        return instance, LiveSession.objects.bulk_create(rows)

    return make


@pytest.fixture
def server_factory(tmp_path: Path, transactional_db) -> Iterator:
    """Start real server processes sharing the test database; all are killed at the end."""
    started: list[ServerProcess] = []

    def factory(**kwargs) -> ServerProcess:
        server = start_server(tmp_path, **kwargs)
        started.append(server)
        return server

    yield factory
    for server in started:
        server.stop()


@pytest.fixture
def servers(server_factory) -> Callable[..., ServerProcess]:
    """Start server processes (daphne unless `server` names another) with a fast heartbeat: FAST_ENV plus `env`."""

    def start(server: str = "daphne", *, port: int | None = None, **env: str) -> ServerProcess:
        return server_factory(server=server, port=port, env={**FAST_ENV, **env})

    return start


@pytest.fixture
def sender_token(django_user_model) -> str:
    """An API token of a user who may send sessions events (and nothing else)."""
    from django.contrib.auth.models import Permission

    from sessions_app.tokens import token_create

    user = django_user_model.objects.create_user("sender", password="pw")
    user.user_permissions.add(Permission.objects.get(codename="send_events_livesession"))
    return token_create(user=user, name="tests")[1]


@pytest.fixture
async def database_proxy(production_services) -> AsyncIterator:
    """A TcpProxy in front of the test's PostgreSQL (servers.database_url_via gives its URL)."""
    from django.db import connection

    from .proxy import TcpProxy

    params = connection.settings_dict
    proxy = await TcpProxy(params.get("HOST") or "127.0.0.1", int(params.get("PORT") or 5432)).start()
    yield proxy
    await proxy.stop()


@pytest.fixture
def proxied_server(database_proxy, server_factory) -> Callable:
    """Start daphnes whose registry is PostgreSQL through `database_proxy`: `await start(**env)` is (server, proxy)."""
    from .servers import PROXIED_HEARTBEAT, database_url_via

    async def start(**env: str) -> tuple:
        server = server_factory(
            env={
                "DATABASE_URL": database_url_via(database_proxy),
                "WSS_HEARTBEAT_SECONDS": str(PROXIED_HEARTBEAT),
                "WSS_INSTANCE_TIMEOUT_SECONDS": "30",  # no lease expiry within these tests
                **env,
            }
        )
        return server, database_proxy

    return start


@pytest.fixture
async def redis_proxy(production_services, settings) -> AsyncIterator:
    """A TcpProxy in front of the test's Redis (servers.redis_url_via gives its URL)."""
    from urllib.parse import urlsplit

    from .proxy import TcpProxy

    url = urlsplit(settings.REDIS_URL)
    proxy = await TcpProxy(url.hostname or "127.0.0.1", url.port or 6379).start()
    yield proxy
    await proxy.stop()


@pytest.fixture
def daphne_server(server_factory) -> ServerProcess:
    """One real daphne process on a free port."""
    return server_factory()


def production_services_expected() -> bool:
    """In CI the production path must run, not skip."""
    return os.environ.get("CI", "").lower() == "true"


@pytest.fixture
def production_services(settings) -> None:
    """Require the production path (PostgreSQL registry, channels-redis layer).

    Tests marked `production` run in `make test-production`; without the services they
    skip on a laptop but fail in CI, where they must run.
    """
    from django.db import connection

    missing = []
    if connection.vendor != "postgresql":
        missing.append("DATABASE_URL is not PostgreSQL")
    if not getattr(settings, "REDIS_URL", ""):
        missing.append("REDIS_URL is unset")
    if missing:
        reason = "production path needed: " + ", ".join(missing) + " (run `make test-production`)"
        if production_services_expected():
            pytest.fail(reason)
        pytest.skip(reason)


CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    """Playwright drives Debian's Chromium (its own browser download is unreachable here)."""
    if not os.path.exists(CHROMIUM):
        reason = f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/run does)"
        if production_services_expected():
            pytest.fail(reason)
        pytest.skip(reason)
    return {
        **browser_type_launch_args,
        "executable_path": CHROMIUM,
        "args": [
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--disable-quic",
        ],
    }


@pytest.fixture(scope="session", autouse=True)
def database_connections_closed_before_teardown(django_db_setup) -> Iterator[None]:
    """Close the connections other threads hold, so PostgreSQL can drop the test database.

    The registry writer's thread and asgiref's executor (async ORM calls) keep persistent
    connections; set up after the database, this fixture is torn down before it.
    """
    yield
    from asgiref.sync import SyncToAsync
    from django.db import connections

    from sessions_app.sessions import registry_writer

    registry_writer.close_connection()
    SyncToAsync.single_thread_executor.submit(connections.close_all).result(timeout=10)


@pytest.fixture
def unreachable_channel_layer(settings) -> Iterator[None]:
    """The project's Redis layer pointed at a loopback port nothing listens on: every call fails for real."""
    from channels.layers import channel_layers

    from .servers import free_port

    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "sessions_app.layers.RedisChannelLayer",
            "CONFIG": {"hosts": [f"redis://127.0.0.1:{free_port()}/0"]},
        }
    }
    channel_layers.backends.pop("default", None)
    yield
    channel_layers.backends.pop("default", None)
