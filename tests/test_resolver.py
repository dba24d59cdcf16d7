"""Workspace paths are resolved off the event loop, in a bounded pool, within a time bound.

What is real here: the pool, its threads, the time bound, the event loop and the whole ASGI
application. What is simulated: the hung filesystem. No FUSE or network mount is available,
so the one blocking call (`resolver.blocking_resolve`) is replaced, at the module
boundary, by one that blocks its thread until released, for paths under `/hung`.
"""

import threading
import time

import pytest

from sessions_app import resolver
from sessions_app.workspaces import workspace_resolve

from .communicators import open_session

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def hung_paths(monkeypatch, settings):
    """Paths under /hung block their thread until the test ends; every call is recorded."""
    settings.WSS_WORKSPACE_RESOLVE_TIMEOUT_SECONDS = 0.3
    settings.WSS_WORKSPACE_RESOLVE_THREADS = 2
    release = threading.Event()
    calls: list[str] = []

    def resolve(raw_path: str, **kwargs) -> str:
        calls.append(raw_path)
        if raw_path.startswith("/hung"):
            release.wait(timeout=30)
        return workspace_resolve(raw_path, **kwargs)

    monkeypatch.setattr(resolver, "blocking_resolve", resolve)
    yield calls
    release.set()


def resolve_threads() -> int:
    return sum(1 for thread in threading.enumerate() if thread.name.startswith("wss-resolve"))


async def test_a_hung_path_is_answered_unavailable_and_the_loop_keeps_serving(hung_paths, workspace):
    hung, hung_reply = await open_session_later("/hung/nfs/project")
    # While that thread hangs, the event loop serves another client at once.
    started = time.monotonic()
    good, reply = await open_session(workspace)
    assert reply["type"] == "new_session"
    assert time.monotonic() - started < 0.3  # answered before the hung one's time bound
    answer = await hung_reply
    assert answer["code"] == "unavailable"
    assert "0.3 s" in answer["message"]
    # The connection stays open and usable.
    await hung.send_json_to({"type": "new_session", "workspace_dir": str(workspace)})
    assert (await hung.receive_json_from(timeout=5))["type"] == "new_session"
    for comm in (hung, good):
        await comm.disconnect()


async def open_session_later(path: str):
    """Send new_session on `path` and hand back the communicator and a task for its reply."""
    import asyncio

    from channels.testing import WebsocketCommunicator

    from wssproject.asgi import application

    comm = WebsocketCommunicator(application, "/ws")
    assert (await comm.connect())[0]
    await comm.send_json_to({"type": "new_session", "workspace_dir": path})
    return comm, asyncio.ensure_future(comm.receive_json_from(timeout=5))


async def test_many_hung_paths_hold_no_more_threads_than_the_pool(hung_paths, workspace):
    import asyncio

    before = resolve_threads()
    opened = [await open_session_later(f"/hung/{n}") for n in range(12)]
    replies = await asyncio.gather(*(reply for _, reply in opened))
    assert {reply["code"] for reply in replies} == {"unavailable"}
    assert resolve_threads() - before <= 2
    assert resolve_threads() <= 2 + before
    # Only the two that got a thread ever reached the filesystem call; the queued ones were dropped.
    assert len([path for path in hung_paths if path.startswith("/hung")]) <= 2
    for comm, _ in opened:
        await comm.disconnect()


@pytest.mark.parametrize(
    "path",
    ["/etc", "/etc/../{root}/project", "{root}/../../etc", "{root}-evil/project", "{root}/../ws-evil"],
)
def test_a_path_outside_the_roots_is_refused_without_a_filesystem_call(monkeypatch, tmp_path, path):
    import os.path

    from sessions_app.errors import WorkspaceForbidden

    root = str(tmp_path / "ws")
    touched: list[str] = []

    def record(module, name):
        original = getattr(module, name)

        def touch(*args, **kwargs):
            touched.append(name)
            return original(*args, **kwargs)

        monkeypatch.setattr(module, name, touch)

    for name in ("realpath", "isdir", "exists", "islink"):
        record(os.path, name)
    for name in ("lstat", "stat"):
        record(os, name)
    try:
        with pytest.raises(WorkspaceForbidden):
            workspace_resolve(path.format(root=root.lstrip("/") if path.startswith("/etc/") else root), roots=[root])
    finally:
        monkeypatch.undo()  # before pytest, which needs the real functions, reports anything
    assert touched == []
