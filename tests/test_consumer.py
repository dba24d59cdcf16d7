"""The protocol through the real ASGI application, with Channels' WebsocketCommunicator."""

import json
import os
import re
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from channels.testing import WebsocketCommunicator
from django.db import DatabaseError

from sessions_app import services
from sessions_app.models import LiveSession
from wssproject.asgi import application

from .communicators import open_session

pytestmark = pytest.mark.django_db(transaction=True)

TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


async def new_session(comm: WebsocketCommunicator, workspace_dir, **extra) -> dict:
    await comm.send_json_to({"type": "new_session", "workspace_dir": str(workspace_dir), **extra})
    return await comm.receive_json_from(timeout=5)


async def expect_close(comm: WebsocketCommunicator, code: int) -> None:
    message = await comm.receive_output(timeout=5)
    assert message == {"type": "websocket.close", "code": code}


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


async def test_row_is_committed_before_the_reply_and_names_its_connection(communicator, workspace):
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
    monkeypatch.setattr(services.registry_writer, "apply", broken)
    reply = await new_session(communicator, workspace, request_id=3)
    assert (reply["code"], reply["request_id"]) == ("unavailable", 3)
    assert await LiveSession.objects.acount() == 0

    monkeypatch.undo()
    await assert_still_open_and_usable(communicator, workspace)


async def test_row_lives_exactly_as_long_as_the_connection(workspace):
    comm = WebsocketCommunicator(application, "/ws")
    assert (await comm.connect())[0]
    reply = await new_session(comm, workspace)
    assert await LiveSession.objects.filter(pk=reply["session_id"]).aexists()
    await comm.disconnect()
    assert not await LiveSession.objects.filter(pk=reply["session_id"]).aexists()


async def test_row_is_removed_after_a_fatal_protocol_error(workspace):
    comm = WebsocketCommunicator(application, "/ws")
    assert (await comm.connect())[0]
    reply = await new_session(comm, workspace)
    await comm.send_to(text_data="garbage")
    await comm.receive_json_from(timeout=5)
    await expect_close(comm, 4400)
    # The server asked to close; the transport answers with a disconnect, as daphne does.
    await comm.disconnect(code=4400)
    assert not await LiveSession.objects.filter(pk=reply["session_id"]).aexists()


async def test_disconnect_without_a_session_is_harmless():
    comm = WebsocketCommunicator(application, "/ws")
    assert (await comm.connect())[0]
    await comm.disconnect()
    assert await LiveSession.objects.acount() == 0


async def test_unexpected_exception_becomes_internal_error_not_a_crash(communicator, workspace, monkeypatch):
    from sessions_app import consumers

    def explode(*args, **kwargs):
        raise RuntimeError("bug")

    monkeypatch.setattr(consumers, "workspace_resolve", explode)
    reply = await new_session(communicator, workspace, request_id=5)
    assert reply["code"] == "internal_error"
    monkeypatch.undo()
    await assert_still_open_and_usable(communicator, workspace)


async def test_other_paths_are_refused_at_the_handshake():
    comm = WebsocketCommunicator(application, "/elsewhere")
    connected, _ = await comm.connect()
    assert not connected


async def test_trailing_slash_path_works(workspace):
    comm = WebsocketCommunicator(application, "/ws/")
    assert (await comm.connect())[0]
    assert (await new_session(comm, workspace))["type"] == "new_session"
    await comm.disconnect()


async def test_many_connections_each_hold_their_own_session(workspace):
    comms = [WebsocketCommunicator(application, "/ws") for _ in range(10)]
    ids = set()
    for comm in comms:
        assert (await comm.connect())[0]
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


async def test_an_over_long_client_address_is_clamped_to_the_column_not_refused(workspace):
    # A forwarded-for header can make the peer anything; the column holds 64 characters.
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

    monkeypatch.setattr(services.registry_writer, "apply", broken)
    await comm.disconnect()  # re-raises whatever the application raised
    assert "registry delete of session" in caplog.text
