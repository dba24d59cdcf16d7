"""The example app's `list_workspace`: confined to the session's workspace, bounded, through the real app."""

import json
import os
import threading
import time
from pathlib import Path

import pytest
import websockets

from sessions_app.errors import InvalidRequest, WorkspaceForbidden, WorkspaceNotFound
from workspace_files import listing, session_messages
from workspace_files.listing import workspace_list

from .communicators import connect, open_session, ws_open_session

FAR = 1e12  # a deadline that never comes


def listed(workspace: Path, path: str = "", *, limit: int = 100, max_bytes: int = 65536) -> listing.Listing:
    return workspace_list(str(workspace.resolve()), path, limit=limit, max_bytes=max_bytes, deadline=FAR)


@pytest.fixture
def tree(workspace: Path, tmp_path: Path) -> Path:
    """A workspace with a file, a directory, a link inside and a link out; and a secret outside."""
    (workspace / "b.txt").write_text("hello")
    (workspace / "src").mkdir()
    (workspace / "src" / "main.py").write_text("print()\n")
    (workspace / "inside").symlink_to(workspace / "src")
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "key").write_text("k")
    (workspace / "out").symlink_to(tmp_path / "secret")
    return workspace


# --- the listing itself (no database) -------------------------------------------------------


def test_entries_are_sorted_by_name_with_kind_and_size(tree):
    result = listed(tree)
    assert result == listing.Listing(
        path="",
        entries=[
            {"name": "b.txt", "kind": "file", "size": 5},
            {"name": "inside", "kind": "symlink", "size": None},
            {"name": "out", "kind": "symlink", "size": None},
            {"name": "src", "kind": "directory", "size": None},
        ],
        truncated=False,
    )
    assert listed(tree, "./src/").entries == [{"name": "main.py", "kind": "file", "size": 8}]


def test_a_symlink_that_stays_inside_is_followed(tree):
    assert listed(tree, "inside").entries == [{"name": "main.py", "kind": "file", "size": 8}]


@pytest.mark.parametrize("path", ["..", "src/../..", "src/../../secret", "../workspace"])
def test_dot_dot_is_refused_before_the_filesystem_is_touched(tree, path):
    with pytest.raises(InvalidRequest, match=r'may not contain "\.\."'):
        listed(tree, path)


@pytest.mark.parametrize("path", ["/", "/etc", "//etc"])
def test_an_absolute_path_is_refused(tree, path):
    with pytest.raises(InvalidRequest, match="not absolute"):
        listed(tree, path)


def test_a_symlink_that_leads_out_is_refused(tree):
    with pytest.raises(WorkspaceForbidden, match="leads outside"):
        listed(tree, "out")


def test_a_missing_path_or_a_file_is_not_found(tree):
    for path in ("nope", "b.txt", "b.txt/x"):
        with pytest.raises(WorkspaceNotFound):
            listed(tree, path)


def test_the_listing_is_bounded_by_limit_and_by_bytes(workspace):
    for n in range(30):
        (workspace / f"f{n:02}").write_text("")
    by_count = listed(workspace, limit=10)
    assert ([e["name"] for e in by_count.entries], by_count.truncated) == ([f"f{n:02}" for n in range(10)], True)
    by_bytes = listed(workspace, max_bytes=5 * (3 + listing.ENTRY_OVERHEAD_BYTES))
    assert (len(by_bytes.entries), by_bytes.truncated) == (5, True)
    assert listed(workspace).truncated is False


def test_the_scan_stops_at_its_deadline(workspace):
    for n in range(5):
        (workspace / f"f{n}").write_text("")
    past = workspace_list(str(workspace.resolve()), "", limit=100, max_bytes=65536, deadline=time.monotonic() - 1)
    assert (past.entries, past.truncated) == ([], True)


# --- through the real ASGI application -------------------------------------------------------


@pytest.mark.django_db(transaction=True)
async def test_list_workspace_lists_the_sessions_workspace(tree):
    comm, _ = await open_session(tree, ok=True)
    await comm.send_json_to({"type": "list_workspace", "path": "src", "limit": 10, "request_id": "l"})
    assert await comm.receive_json_from(timeout=5) == {
        "type": "list_workspace",
        "path": "src",
        "entries": [{"name": "main.py", "kind": "file", "size": 8}],
        "truncated": False,
        "request_id": "l",
    }
    await comm.send_json_to({"type": "list_workspace"})
    assert [entry["name"] for entry in (await comm.receive_json_from(timeout=5))["entries"]] == [
        "b.txt",
        "inside",
        "out",
        "src",
    ]
    await comm.disconnect()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("fields", "code", "text"),
    [
        ({"path": "../.."}, "invalid_request", '"path" may not contain ".."'),
        ({"path": "/etc"}, "invalid_request", '"path" must be relative'),
        ({"path": "out"}, "workspace_forbidden", "'out' leads outside the session's workspace."),
        ({"path": "nope"}, "workspace_not_found", "'nope' does not exist"),
        ({"limit": 0}, "invalid_request", "The field /limit is invalid: 0 is less than the minimum of 1."),
        ({"limit": 1001}, "invalid_request", "The field /limit is invalid"),
        ({"path": 7}, "invalid_request", "The field /path is invalid: 7 is not of type 'string'."),
        ({"recursive": True}, "invalid_request", "The message is invalid: Additional properties"),
    ],
)
async def test_bad_requests_are_answered_and_the_connection_stays(tree, fields, code, text):
    comm, _ = await open_session(tree, ok=True)
    await comm.send_json_to({"type": "list_workspace", **fields, "request_id": 3})
    reply = await comm.receive_json_from(timeout=5)
    assert (reply["code"], reply["request_id"]) == (code, 3)
    assert reply["message"].startswith(text)
    await comm.send_json_to({"type": "list_workspace"})
    assert (await comm.receive_json_from(timeout=5))["type"] == "list_workspace"
    await comm.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_list_workspace_without_a_session_is_no_session():
    comm = await connect()
    await comm.send_json_to({"type": "list_workspace", "request_id": 1})
    reply = await comm.receive_json_from(timeout=5)
    assert (reply["code"], reply["request_id"]) == ("no_session", 1)
    await comm.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_a_listing_that_hangs_is_unavailable_and_the_loop_stays_free(tree, settings, monkeypatch):
    settings.WSS_WORKSPACE_RESOLVE_TIMEOUT_SECONDS = 0.3
    release = threading.Event()

    def hung(*args, **kwargs):
        release.wait(timeout=10)  # a directory on a hung mount: the thread cannot be interrupted
        raise AssertionError("released")

    comm, _ = await open_session(tree, ok=True)
    monkeypatch.setattr(session_messages, "workspace_list", hung)
    try:
        started = time.monotonic()
        await comm.send_json_to({"type": "list_workspace", "request_id": "h"})
        reply = await comm.receive_json_from(timeout=5)
        assert (reply["code"], reply["request_id"]) == ("unavailable", "h")
        assert time.monotonic() - started < 2
    finally:
        release.set()
    await comm.disconnect()


@pytest.mark.live
@pytest.mark.django_db(transaction=True)
async def test_list_workspace_on_a_real_server(daphne_server, tree):
    (tree / "src" / "ünïcode.md").write_text("x" * 1234)
    os.mkfifo(tree / "src" / "pipe")
    async with websockets.connect(daphne_server.url) as ws:
        await ws_open_session(ws, tree)
        await ws.send(json.dumps({"type": "list_workspace", "path": "inside", "request_id": 1}))
        reply = json.loads(await ws.recv())
    assert reply == {
        "type": "list_workspace",
        "path": "inside",
        "entries": [
            {"name": "main.py", "kind": "file", "size": 8},
            {"name": "pipe", "kind": "other", "size": None},
            {"name": "ünïcode.md", "kind": "file", "size": 1234},
        ],
        "truncated": False,
        "request_id": 1,
    }
