"""The protocol through the real ASGI application, with Channels' WebsocketCommunicator."""

import contextlib
import json
import logging
import os
import re
import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from channels.testing import WebsocketCommunicator
from django import db
from django.db import DatabaseError

from sessions_app import heartbeat, sessions, terminate
from sessions_app.models import LiveSession

from .communicators import connect, detached_session, expect_close, new_session, open_session
from .polling import wait_until
from .servers import suite_database_url as database_url

pytestmark = pytest.mark.django_db(transaction=True)

TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


async def test_new_session_reply_carries_uuid4_real_path_and_utc_timestamp(communicator, workspace):
    before = datetime.now(UTC)
    reply = await new_session(communicator, workspace)
    assert reply["type"] == "new_session"
    assert uuid.UUID(reply["session_id"]).version == 4
    assert reply["workspace_dir"] == str(workspace.resolve())
    assert TIMESTAMP.match(reply["created_at"])
    created = datetime.fromisoformat(reply["created_at"].replace("Z", "+00:00"))
    assert before - timedelta(seconds=1) <= created <= datetime.now(UTC) + timedelta(seconds=1)
    assert "request_id" not in reply


async def test_workspace_dir_is_reported_with_symlinks_resolved(communicator, workspace, tmp_path):
    link = tmp_path / "link"
    link.symlink_to(workspace)
    reply = await new_session(communicator, link)
    assert reply["workspace_dir"] == str(workspace.resolve())
    row = await LiveSession.objects.aget(pk=reply["session_id"])
    assert row.workspace_dir == str(workspace.resolve())


@pytest.mark.parametrize("request_id", ["req-1", 17])
async def test_request_id_is_echoed(communicator, workspace, request_id):
    reply = await new_session(communicator, workspace, request_id=request_id)
    assert reply["request_id"] == request_id


COMMIT_GATE = 0x5753  # an advisory lock key of this test's own


@contextlib.asynccontextmanager
async def session_commits_held(writes: str = "INSERT") -> AsyncIterator[Callable[[], None]]:
    """Hold back the commit of every session row `writes` (INSERT, UPDATE) until the yielded `release()` is called.

    PostgreSQL: a deferred constraint trigger makes each commit wait on an advisory lock the
    test holds, so the row is inserted but not committed. SQLite: another connection holds
    the write lock, so the writer's whole transaction (its commit too) waits.
    """
    vendor, params = db.connection.vendor, db.connection.settings_dict
    if vendor == "postgresql":
        gate = psycopg.connect(database_url(), autocommit=True)
        gate.execute("SELECT pg_advisory_lock(%s)", (COMMIT_GATE,))
        ddl = [
            f"CREATE FUNCTION wss_commit_gate() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            f"PERFORM pg_advisory_lock_shared({COMMIT_GATE}); PERFORM pg_advisory_unlock_shared({COMMIT_GATE}); "
            f"RETURN NULL; END $$",
            f"CREATE CONSTRAINT TRIGGER wss_commit_gate AFTER {writes} ON sessions_app_livesession "
            "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION wss_commit_gate()",
        ]
        for statement in ddl:
            gate.execute(statement)

        def release() -> None:
            gate.execute("SELECT pg_advisory_unlock(%s)", (COMMIT_GATE,))

        try:
            yield release
        finally:
            release()
            gate.execute("DROP TRIGGER wss_commit_gate ON sessions_app_livesession")
            gate.execute("DROP FUNCTION wss_commit_gate()")
            gate.close()
    else:
        gate = sqlite3.connect(params["TEST"]["NAME"], isolation_level=None, check_same_thread=False)
        gate.execute("BEGIN IMMEDIATE")

        def release() -> None:
            if gate.in_transaction:
                gate.execute("COMMIT")

        try:
            yield release
        finally:
            release()
            gate.close()


async def test_the_reply_waits_for_the_rows_commit(communicator, workspace):
    async with session_commits_held() as release:
        await communicator.send_json_to({"type": "new_session", "workspace_dir": str(workspace)})
        assert await communicator.receive_nothing(timeout=0.5), "replied before the row was committed"
        assert not await LiveSession.objects.aexists()
        release()
        reply = await communicator.receive_json_from(timeout=10)
    assert reply["type"] == "new_session"
    assert await LiveSession.objects.filter(pk=reply["session_id"]).aexists()


async def test_the_resume_reply_waits_for_the_rows_commit(workspace):
    created = await detached_session(workspace)
    await wait_until(lambda: LiveSession.objects.filter(detached_at__isnull=False).aexists(), 10, what="the detach")
    comm = await connect()
    async with session_commits_held("UPDATE") as release:
        await comm.send_json_to(
            {"type": "resume_session", "session_id": created["session_id"], "resume_token": created["resume_token"]}
        )
        assert await comm.receive_nothing(timeout=0.5), "replied before the resume was committed"
        assert (await LiveSession.objects.aget(pk=created["session_id"])).detached_at is not None
        release()
        reply = await comm.receive_json_from(timeout=10)
    assert reply["type"] == "session_resumed"
    assert (await LiveSession.objects.aget(pk=created["session_id"])).detached_at is None
    await comm.disconnect()


async def test_the_row_names_its_connection_and_its_creation_time(communicator, workspace):
    reply = await new_session(communicator, workspace)
    row = await LiveSession.objects.select_related("instance").aget(pk=reply["session_id"])
    assert row.channel_name
    assert row.instance.is_alive
    assert row.created_at.isoformat(timespec="milliseconds").replace("+00:00", "Z") == reply["created_at"]


@pytest.mark.parametrize(
    ("frame", "code", "close_code"),
    [
        ("not json", "invalid_json", 4400),
        ("[1, 2, 3]", "invalid_json", 4400),
        ('{"workspace_dir": "/tmp"}', "unknown_type", 4400),
        ('{"type": 7}', "unknown_type", 4400),
        ('{"type": "teleport"}', "unknown_type", 4400),
        ('{"type": "new_session", "workspace_dir": "/tmp", "pad": "' + "x" * 70_000 + '"}', "message_too_large", 4413),
    ],
)
async def test_fatal_errors_send_the_error_frame_then_close(communicator, frame, code, close_code):
    await communicator.send_to(text_data=frame)
    reply = await communicator.receive_json_from(timeout=5)
    assert reply["type"] == "error"
    assert reply["code"] == code
    assert reply["message"]
    await expect_close(communicator, close_code)


async def test_binary_frame_gets_unsupported_frame_then_4415(communicator):
    await communicator.send_to(bytes_data=b"\x81\x00")
    reply = await communicator.receive_json_from(timeout=5)
    assert reply["code"] == "unsupported_frame"
    await expect_close(communicator, 4415)


async def test_empty_text_frame_is_invalid_json(communicator):
    # send_to refuses an empty frame, so send the ASGI event a server would deliver.
    await communicator.send_input({"type": "websocket.receive", "text": ""})
    assert (await communicator.receive_json_from(timeout=5))["code"] == "invalid_json"
    await expect_close(communicator, 4400)


async def assert_still_open_and_usable(comm: WebsocketCommunicator, workspace) -> None:
    reply = await new_session(comm, workspace)
    assert reply["type"] == "new_session"


@pytest.mark.parametrize(
    "workspace_dir",
    [None, 5, "", "relative/dir", "/tmp/\x00x", "/" + "y" * 300, "/z" * 3000],
)
async def test_invalid_request_keeps_the_connection_open(communicator, workspace, workspace_dir):
    fields = {"type": "new_session", "request_id": "r"}
    if workspace_dir is not None:
        fields["workspace_dir"] = workspace_dir
    await communicator.send_json_to(fields)
    reply = await communicator.receive_json_from(timeout=5)
    assert reply == {"type": "error", "code": "invalid_request", "message": reply["message"], "request_id": "r"}
    assert await LiveSession.objects.acount() == 0
    await assert_still_open_and_usable(communicator, workspace)


async def test_a_directory_named_with_255_utf8_bytes_opens_a_session(communicator, tmp_path):
    name = "é" * 127 + "a"  # 128 characters, 255 bytes: the kernel's NAME_MAX, and ours
    (tmp_path / name).mkdir()
    reply = await new_session(communicator, tmp_path / name)
    assert reply["workspace_dir"] == str((tmp_path / name).resolve())


async def test_missing_workspace_is_not_found_and_stays_open(communicator, workspace, tmp_path):
    (tmp_path / "file").write_text("x")
    for path in (tmp_path / "missing", tmp_path / "file"):
        reply = await new_session(communicator, path, request_id=1)
        assert (reply["code"], reply["request_id"]) == ("workspace_not_found", 1)
    assert await LiveSession.objects.acount() == 0
    await assert_still_open_and_usable(communicator, workspace)


async def test_second_new_session_on_one_connection_is_session_exists(communicator, workspace):
    first = await new_session(communicator, workspace)
    second = await new_session(communicator, workspace, request_id="again")
    assert second["code"] == "session_exists"
    assert first["session_id"] in second["message"]
    assert second["request_id"] == "again"
    assert await LiveSession.objects.acount() == 1


async def test_registry_failure_is_unavailable_and_the_connection_recovers(communicator, workspace, monkeypatch):
    def broken(*args, **kwargs):
        raise DatabaseError("database is down")

    # Every registry write goes through the group-commit writer's one apply function.
    monkeypatch.setattr(sessions.registry_writer, "apply", broken)
    reply = await new_session(communicator, workspace, request_id=3)
    assert (reply["code"], reply["request_id"]) == ("unavailable", 3)
    assert await LiveSession.objects.acount() == 0

    monkeypatch.undo()
    await assert_still_open_and_usable(communicator, workspace)


async def test_row_lives_exactly_as_long_as_the_connection(workspace):
    comm = await connect()
    reply = await new_session(comm, workspace)
    assert await LiveSession.objects.filter(pk=reply["session_id"]).aexists()
    await comm.disconnect()
    assert not await LiveSession.objects.filter(pk=reply["session_id"]).aexists()


async def test_row_is_removed_after_a_fatal_protocol_error(workspace):
    comm = await connect()
    reply = await new_session(comm, workspace)
    await comm.send_to(text_data="garbage")
    await comm.receive_json_from(timeout=5)
    await expect_close(comm, 4400)
    # The server asked to close; the transport answers with a disconnect, as daphne does.
    await comm.disconnect(code=4400)
    assert not await LiveSession.objects.filter(pk=reply["session_id"]).aexists()


async def test_disconnect_without_a_session_is_harmless():
    comm = await connect()
    await comm.disconnect()
    assert await LiveSession.objects.acount() == 0


async def test_unexpected_exception_becomes_internal_error_not_a_crash(communicator, workspace, monkeypatch, caplog):
    from sessions_app import resolver

    def explode(*args, **kwargs):
        raise RuntimeError("bug")

    monkeypatch.setattr(resolver, "blocking_resolve", explode)
    with caplog.at_level(logging.ERROR, logger="sessions_app.consumers"):
        reply = await new_session(communicator, workspace, request_id=5)
    assert (reply["code"], reply["request_id"]) == ("internal_error", 5)
    [record] = [r for r in caplog.records if r.name == "sessions_app.consumers"]
    assert record.exc_info is not None and record.exc_info[0] is RuntimeError
    assert "Traceback" in caplog.text and "RuntimeError: bug" in caplog.text
    monkeypatch.undo()
    await assert_still_open_and_usable(communicator, workspace)


async def test_other_paths_are_refused_at_the_handshake():
    from wssproject.asgi import application

    comm = WebsocketCommunicator(application, "/elsewhere")
    connected, _ = await comm.connect()
    assert not connected
    await comm.disconnect()  # end the refused consumer as a server would


async def test_trailing_slash_path_works(workspace):
    comm = await connect("/ws/")
    assert (await new_session(comm, workspace))["type"] == "new_session"
    await comm.disconnect()


async def test_many_connections_each_hold_their_own_session(workspace):
    comms = [await connect() for _ in range(10)]
    ids = set()
    for comm in comms:
        ids.add((await new_session(comm, workspace))["session_id"])
    assert len(ids) == 10
    assert await LiveSession.objects.acount() == 10
    for comm in comms:
        await comm.disconnect()
    assert await LiveSession.objects.acount() == 0


def test_error_frames_are_single_json_objects():
    from sessions_app import protocol
    from sessions_app.errors import SessionExists

    text = protocol.encode(protocol.error_reply(SessionExists("x", request_id=1)))
    assert json.loads(text) == {"type": "error", "code": "session_exists", "message": "x", "request_id": 1}


async def test_an_over_long_client_address_is_clamped_to_the_column_not_refused(workspace, settings):
    # A forwarded-for header can make the peer anything; the column holds 64 characters.
    from wssproject.asgi import application

    settings.WSS_WORKSPACE_ROOTS = [str(workspace.parent)]  # a peer beyond loopback needs a restricted server

    comm = WebsocketCommunicator(application, "/ws")
    comm.scope["client"] = ("f" * 100, 65535)  # read by the app when it runs, after this line
    assert (await comm.connect())[0]
    reply = await new_session(comm, workspace)
    assert reply["type"] == "new_session"
    row = await LiveSession.objects.aget(pk=reply["session_id"])
    assert row.client_addr == ("f" * 100 + ":65535")[:64]
    await comm.disconnect()


async def test_a_workspace_whose_real_path_is_not_utf8_is_invalid_request(communicator, tmp_path, workspace):
    undecodable = os.path.join(os.fsencode(tmp_path), b"\xff")
    os.mkdir(undecodable)
    (tmp_path / "link").symlink_to(os.fsdecode(undecodable))  # a client can only name it through a link
    reply = await new_session(communicator, tmp_path / "link", request_id=8)
    assert (reply["code"], reply["request_id"]) == ("invalid_request", 8)
    assert await LiveSession.objects.acount() == 0
    await assert_still_open_and_usable(communicator, workspace)


async def test_a_non_database_failure_of_the_writer_does_not_escape_disconnect(workspace, monkeypatch, caplog):
    comm, reply = await open_session(workspace)
    assert reply["type"] == "new_session"

    def broken(operations):
        raise RuntimeError("a bug in the writer")

    monkeypatch.setattr(sessions.registry_writer, "apply", broken)
    await comm.disconnect()  # re-raises whatever the application raised
    assert "registry delete of session" in caplog.text


# --- after a closing error, frames still in flight get no answer -------------------------------


async def close_4400(comm, workspace, settings) -> str:
    await comm.send_to(text_data="not json")
    return "invalid_json"


async def close_4413(comm, workspace, settings) -> str:
    await comm.send_to(text_data="x" * 70_000)
    return "message_too_large"


async def close_4415(comm, workspace, settings) -> str:
    await comm.send_to(bytes_data=b"\x00")
    return "unsupported_frame"


async def close_4429(comm, workspace, settings) -> str:
    # The test connects with a bucket of one frame that never refills.
    assert [(await new_session(comm, ""))["code"] for _ in range(2)] == ["invalid_request", "rate_limited"]
    await comm.send_json_to({"type": "new_session", "workspace_dir": ""})
    return "rate_limit_exceeded"


async def close_4410(comm, workspace, settings) -> str:
    session_id = (await new_session(comm, workspace))["session_id"]
    assert await terminate.session_terminate_request(session_id=session_id)
    return "session_terminated"


async def close_4503(comm, workspace, settings) -> str:
    await new_session(comm, workspace)
    await heartbeat.stop()
    return "server_shutting_down"


CLOSERS = {4400: close_4400, 4413: close_4413, 4415: close_4415, 4429: close_4429, 4410: close_4410, 4503: close_4503}


@pytest.mark.usefixtures("fresh_process")
@pytest.mark.parametrize("close_code", CLOSERS)
async def test_frames_after_a_closing_error_are_ignored(close_code, workspace, settings):
    settings.WSS_RATE_LIMIT, settings.WSS_RATE_LIMIT_BURST = (0.001, 1) if close_code == 4429 else (20.0, 40)
    comm = await connect()
    code = await CLOSERS[close_code](comm, workspace, settings)
    reply = await comm.receive_json_from(timeout=5)
    assert (reply["type"], reply["code"]) == ("error", code)
    await expect_close(comm, close_code)
    # Frames the client sent before it saw the close: a good one, a bad one, a binary one.
    await comm.send_json_to({"type": "new_session", "workspace_dir": str(workspace)})
    await comm.send_to(text_data="not json")
    await comm.send_to(bytes_data=b"\x00")
    assert await comm.receive_nothing(timeout=0.3)
    assert not await LiveSession.objects.aexists()
    await comm.disconnect(code=close_code)
