"""Several real server processes sharing PostgreSQL and Redis: one registry, terminate across
processes, reaping after SIGKILL, a restart cleaning up after itself, graceful SIGTERM/SIGINT;
under daphne and the fast production command (uvicorn-fast) where it is cheap.
"""

import asyncio
import http.cookiejar
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections import Counter

import pytest
import websockets
from asgiref.sync import sync_to_async

from sessions_app.models import LiveSession, ServerInstance

from .communicators import frames_until_closed, ws_connect_session
from .locks import instance_locked
from .polling import SLACK, wait_until
from .servers import FAST_HEARTBEAT as HEARTBEAT
from .servers import FAST_TIMEOUT as TIMEOUT
from .servers import ROOT, STOP_SECONDS, ServerProcess, instance_of
from .servers import suite_database_url as database_url

# `servers` (tests/conftest.py) start processes that beat every second and are declared dead after
# 5 s; here they share the production Postgres and Redis.
pytestmark = [
    pytest.mark.production,
    pytest.mark.live,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("production_services"),
]

LOAD = 200  # sessions per loaded process
CONCURRENCY = 25  # handshakes in flight at once


async def open_sessions(url: str, workspace, count: int) -> list[tuple[websockets.ClientConnection, str]]:
    """Open `count` sessions, at most CONCURRENCY handshakes at a time; (connection, session id) each."""
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one() -> tuple[websockets.ClientConnection, str]:
        async with gate:
            return await ws_connect_session(url, workspace)

    return await asyncio.wait_for(asyncio.gather(*(one() for _ in range(count))), timeout=120)


async def last_words(ws: websockets.ClientConnection, timeout: float = 30) -> tuple[dict | None, int | None]:
    """Read until the connection closes: the last frame received, and the close code received (None: no frame)."""
    frames, code = await frames_until_closed(ws, timeout)
    return (frames[-1] if frames else None), code


@sync_to_async
def sessions_of(instance_id) -> int:
    return LiveSession.objects.filter(instance_id=instance_id).count()


def terminate_command(*session_ids: str) -> subprocess.CompletedProcess:
    """`manage.py terminate_sessions`, as an operator runs it beside a server, on the shared services."""
    env = {**os.environ, "DATABASE_URL": database_url(), "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "manage.py", "terminate_sessions", *session_ids],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def close_all(connections) -> None:
    await asyncio.gather(*(ws.close() for ws, _ in connections), return_exceptions=True)


async def test_sessions_of_two_processes_share_one_registry(servers, workspace):
    a, b = servers(), servers()
    on_a = await open_sessions(a.url, workspace, 3)
    on_b = await open_sessions(b.url, workspace, 2)
    instance_a, instance_b = await instance_of(a), await instance_of(b)
    assert instance_a is not None and instance_b is not None and instance_a.pk != instance_b.pk
    assert await sessions_of(instance_a.pk) == 3
    assert await sessions_of(instance_b.pk) == 2
    await close_all(on_a + on_b)


@pytest.mark.parametrize("server", ["daphne", "uvicorn-fast"])
async def test_terminate_beside_process_a_ends_a_session_held_by_process_b_with_4410(servers, workspace, server):
    servers(server)  # process A: the operator's side
    b = servers(server)
    [(ws, session_id), (bystander, bystander_id)] = await open_sessions(b.url, workspace, 2)
    result = await asyncio.to_thread(terminate_command, session_id)
    assert result.returncode == 0, result.stderr
    frame, code = await last_words(ws)
    assert frame is not None and frame["code"] == "session_terminated"
    assert code == 4410
    assert not await LiveSession.objects.filter(pk=session_id).aexists()
    assert await LiveSession.objects.filter(pk=bystander_id).aexists()
    await bystander.close()


def admin_terminate(server: ServerProcess, session_id: str) -> str:
    """Log in to the admin on `server` over HTTP, run "Terminate selected sessions" on one row and confirm it."""
    cookies = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(cookies))

    def csrf() -> str:
        return next(cookie.value for cookie in cookies if cookie.name == "csrftoken")

    def post(path: str, fields: dict[str, str]) -> str:
        body = urllib.parse.urlencode({**fields, "csrfmiddlewaretoken": csrf()}).encode()
        with opener.open(server.http_url + path, data=body, timeout=30) as response:
            return response.read().decode()

    opener.open(server.http_url + "/admin/login/", timeout=30).read()
    post("/admin/login/", {"username": "operator", "password": "operator-pass", "next": "/admin/"})
    changelist = "/admin/sessions_app/livesession/"
    action = {"action": "terminate_sessions", "_selected_action": session_id}
    asked = post(changelist, {**action, "index": "0"})
    assert "Terminate 1 live session?" in asked, asked
    return post(changelist, {**action, "post": "yes"})


async def test_the_admin_on_process_a_terminates_a_session_held_by_process_b(servers, workspace, django_user_model):
    await django_user_model.objects.acreate_superuser("operator", "op@example.com", "operator-pass")
    a, b = servers(), servers()
    [(ws, session_id)] = await open_sessions(b.url, workspace, 1)
    page = await asyncio.to_thread(admin_terminate, a, session_id)
    assert f"Session {session_id}: terminate delivered: its server closes it." in page
    frame, code = await last_words(ws)
    assert (frame["code"], code) == ("session_terminated", 4410)
    assert not await LiveSession.objects.filter(pk=session_id).aexists()


@pytest.mark.parametrize("server", ["daphne", "uvicorn-fast"])
async def test_sigkill_with_200_sessions_is_reaped_by_a_peer_within_timeout_plus_heartbeat(servers, workspace, server):
    a, b = servers(server), servers(server)
    on_b = await open_sessions(b.url, workspace, LOAD)
    instance_b = await instance_of(b)
    assert await sessions_of(instance_b.pk) == LOAD
    b.signal(signal.SIGKILL)
    b.wait()

    async def reaped() -> bool:
        return (
            await sessions_of(instance_b.pk) == 0
            and not await ServerInstance.objects.filter(pk=instance_b.pk).aexists()
        )

    took = await wait_until(reaped, TIMEOUT + HEARTBEAT + SLACK, what=f"reaped within {TIMEOUT + HEARTBEAT} s + slack")
    print(f"\nSIGKILL with {LOAD} sessions: reaped by the peer in {took:.1f} s (bound {TIMEOUT + HEARTBEAT} s)")
    assert await instance_of(a) is not None
    codes = Counter([code for _, code in await asyncio.gather(*(last_words(ws) for ws, _ in on_b))])
    assert codes == {None: LOAD}  # 1006: the TCP connection dropped without a close frame


async def test_a_restarted_last_process_reaps_its_dead_predecessor_at_once(servers, workspace):
    first = servers()
    await open_sessions(first.url, workspace, 20)
    predecessor = await instance_of(first)
    first.signal(signal.SIGKILL)
    first.wait()
    assert await sessions_of(predecessor.pk) == 20  # nobody is left to reap them
    # A timeout far beyond the test: only the start-up reap of predecessors can remove the rows.
    second = servers(WSS_INSTANCE_TIMEOUT_SECONDS="600")

    async def gone() -> bool:
        return not await ServerInstance.objects.filter(pk=predecessor.pk).aexists()

    took = await wait_until(gone, SLACK, what="the predecessor reaped at start")
    print(f"\nrestart: predecessor's rows gone {took:.2f} s after the new process listened")
    assert await sessions_of(predecessor.pk) == 0
    assert await instance_of(second) is not None


@pytest.mark.parametrize("server", ["daphne", "uvicorn-fast"])
async def test_a_stopping_process_refuses_new_handshakes_with_403(servers, workspace, server):
    process = servers(server)
    ws, _ = await ws_connect_session(process.url, workspace)
    # The stop tells its clients, then removes its instance row: holding that row's lock
    # keeps the stop in progress, however fast it would otherwise be.
    async with instance_locked((await instance_of(process)).pk):
        process.signal(signal.SIGTERM)
        frames, code = await frames_until_closed(ws, 10)
        assert ([frame["code"] for frame in frames], code) == (["server_shutting_down"], 4503)
        with pytest.raises(websockets.InvalidStatus) as refused:
            await websockets.connect(process.url, open_timeout=5)
        assert refused.value.response.status_code == 403
    assert await asyncio.to_thread(process.wait, STOP_SECONDS[server] + SLACK) in {0, -signal.SIGTERM}


@pytest.mark.parametrize(
    ("server", "signum", "close_code", "error_code"),
    [
        ("daphne", signal.SIGTERM, 4503, "server_shutting_down"),
        ("daphne", signal.SIGINT, 4503, "server_shutting_down"),
        # uvicorn would close every socket with 1012 first; the lifecycle runs the stop before it.
        ("uvicorn", signal.SIGTERM, 4503, "server_shutting_down"),
        ("uvicorn-fast", signal.SIGTERM, 4503, "server_shutting_down"),
        ("uvicorn-fast", signal.SIGINT, 4503, "server_shutting_down"),
    ],
)
async def test_graceful_stop_with_200_sessions_leaves_no_row_and_tells_clients_to_reconnect(
    servers, workspace, server, signum, close_code, error_code
):
    process = servers(server)
    connections = await open_sessions(process.url, workspace, LOAD)
    instance = await instance_of(process)
    assert await sessions_of(instance.pk) == LOAD
    started = time.monotonic()
    process.signal(signum)
    try:
        results = await asyncio.gather(*(last_words(ws) for ws, _ in connections))
    except BaseException as failure:  # pytest.fail's exception too: say what the server was doing
        log, stacks = process.log()[-6000:], process.stacks()
        raise AssertionError(f"{failure}\n--- server log (end) ---\n{log}\n--- stacks ---\n{stacks}") from failure
    # uvicorn re-raises the signal once it has shut down gracefully, so it dies of it.
    assert await asyncio.to_thread(process.wait, STOP_SECONDS[server] + SLACK) in {0, -signum}
    took = time.monotonic() - started
    print(f"\n{server} {signum.name} with {LOAD} sessions: exited after {took:.2f} s (bound {STOP_SECONDS[server]} s)")
    assert took <= STOP_SECONDS[server] + SLACK
    assert Counter(code for _, code in results) == {close_code: LOAD}
    assert Counter(frame["code"] if frame else None for frame, _ in results) == {error_code: LOAD}
    assert await sessions_of(instance.pk) == 0
    assert not await ServerInstance.objects.filter(pk=instance.pk).aexists()
    process.assert_no_traceback()
