"""docs/asyncapi.yaml against the code: generated from the declarations, same codes and fates; frames validate."""

import io
import json
import uuid

import pytest
import websockets
import yaml
from channels.testing import WebsocketCommunicator
from django.core.management import CommandError, call_command
from jsonschema import ValidationError

from sessions_app import errors, message_types, protocol
from sessions_app.asyncapi import document_text
from sessions_app.errors import all_error_classes

from .frames import (
    SCHEMA_PATH,
    asyncapi,
    check_client_frame,
    check_server_frame,
    client_message_types,
    close_codes,
    error_codes,
)

pytestmark = pytest.mark.path_independent


def test_every_error_code_in_the_code_is_in_the_schema_with_its_close_code():
    in_code = {cls.code: cls.close_code for cls in all_error_classes()}
    missing = sorted(set(in_code) - set(error_codes()))
    assert not missing, f"add these codes to components.schemas.ErrorCode in docs/asyncapi.yaml: {missing}"
    wrong = {code: (close, error_codes()[code]) for code, close in in_code.items() if error_codes()[code] != close}
    assert not wrong, f"x-close-code differs from errors.py (code: (errors.py, schema)): {wrong}"


def test_every_error_code_in_the_schema_exists_in_the_code():
    in_code = {cls.code for cls in all_error_classes()}
    extra = sorted(set(error_codes()) - in_code)
    assert not extra, f"docs/asyncapi.yaml documents codes errors.py does not have: {extra}"


def test_every_close_code_in_the_code_is_documented():
    used = {cls.close_code for cls in all_error_classes() if cls.close_code is not None}
    assert used <= close_codes(), f"add to channels.session.x-close-codes: {sorted(used - close_codes())}"


def test_the_committed_document_is_the_one_the_declarations_generate():
    committed = SCHEMA_PATH.read_text()
    generated = document_text(message_types.registry())
    assert committed == generated, "docs/asyncapi.yaml is out of date: run `manage.py asyncapi`"


def test_the_command_writes_the_document_and_its_check_fails_on_a_stale_one(tmp_path):
    target = tmp_path / "asyncapi.yaml"
    target.write_text(SCHEMA_PATH.read_text().replace("wss-sessions", "stale", 1))
    with pytest.raises(CommandError, match="out of date"):
        call_command("asyncapi", "--check", output=target, stdout=io.StringIO())
    call_command("asyncapi", output=target, stdout=io.StringIO())
    assert target.read_text() == SCHEMA_PATH.read_text()
    call_command("asyncapi", "--check", output=target, stdout=io.StringIO())


def test_a_test_apps_types_are_in_the_document_generated_for_it():
    declared = message_types.Registry.from_modules(["sessions_app.session_messages", "tests.msgapp.session_messages"])
    text = document_text(declared)
    assert "# @generated" not in text
    document = yaml.safe_load(text)
    operation = document["operations"]["msgappEcho"]
    assert operation["title"] == "Echo the text, with what the handler knows of the session."
    assert operation["summary"].endswith("Needs a session (else `no_session`).")
    assert document["components"]["schemas"]["MsgappEchoRequest"]["properties"]["type"] == {"const": "msgapp_echo"}
    server_frames = document["components"]["schemas"]["ServerFrame"]["oneOf"]
    assert {"$ref": "#/components/schemas/MsgappEchoReply"} in server_frames
    assert {"$ref": "#/components/schemas/MsgappRefuseReply"} not in server_frames  # it never replies


def test_client_message_types_are_the_declared_ones():
    assert client_message_types() == set(message_types.registry())
    assert {"new_session", "resume_session", "end_session", "list_workspace"} <= client_message_types()


def test_every_declared_example_is_a_valid_client_frame():
    examples = [example for declared in message_types.registry().values() for example in declared.examples]
    assert len(examples) >= 4
    for example in examples:
        check_client_frame(example)


def test_the_document_is_asyncapi_3_with_the_ws_channel():
    document = asyncapi()
    assert document["asyncapi"].startswith("3.")
    assert document["channels"]["session"]["address"] == "/ws"


def test_documented_examples_validate():
    messages = asyncapi()["components"]["messages"]
    check_client_frame(messages["NewSessionRequest"]["examples"][0]["payload"])
    check_server_frame(messages["NewSessionReply"]["examples"][0]["payload"])
    check_server_frame(messages["Error"]["examples"][0]["payload"])
    check_client_frame(messages["ResumeSessionRequest"]["examples"][0]["payload"])
    check_server_frame(messages["SessionResumedReply"]["examples"][0]["payload"])
    check_server_frame(messages["SessionEvent"]["examples"][0]["payload"])


def test_reply_builders_produce_valid_frames():
    from datetime import UTC, datetime

    reply = protocol.new_session_reply(
        session_id=uuid.uuid4(), workspace_dir="/srv/ws", created_at=datetime.now(UTC), request_id=7
    )
    check_server_frame(protocol.encode(reply))
    event = protocol.session_event_reply(
        session_id=uuid.uuid4(), seq=1, event="a.b", data={"x": [1, None]}, sent_at=datetime.now(UTC)
    )
    check_server_frame(protocol.encode(event))
    for cls in all_error_classes():
        check_server_frame(protocol.encode(protocol.error_reply(cls("message", request_id="r"))))


@pytest.mark.parametrize(
    "frame",
    [
        {"type": "error", "code": "no_such_code", "message": "x"},
        {"type": "error", "code": "invalid_json"},
        {
            "type": "new_session",
            "session_id": "not-a-uuid",
            "workspace_dir": "/",
            "created_at": "2026-01-01T00:00:00.000Z",
        },
        {"type": "new_session", "session_id": str(uuid.uuid4()), "workspace_dir": "/", "created_at": "yesterday"},
        {"type": "pong"},
    ],
)
def test_frames_that_break_the_schema_are_rejected(frame):
    with pytest.raises(ValidationError):
        check_server_frame(json.dumps(frame))


def test_binary_server_frames_are_rejected():
    with pytest.raises(AssertionError):
        check_server_frame(b"\x00")


OFF_SCHEMA = json.dumps({"type": "pong"})  # a frame the protocol does not have


async def off_schema_app(scope, receive, send) -> None:
    """An ASGI WebSocket app that accepts, then sends one frame off the schema."""
    assert (await receive())["type"] == "websocket.connect"
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.send", "text": OFF_SCHEMA})
    await receive()


async def test_the_communicator_wrapper_rejects_an_off_schema_frame():
    comm = WebsocketCommunicator(off_schema_app, "/ws")
    assert (await comm.connect())[0]
    with pytest.raises(ValidationError):
        await comm.receive_json_from()
    await comm.disconnect()


async def test_the_websockets_client_wrapper_rejects_an_off_schema_frame_on_recv_and_iteration():
    async def handler(ws) -> None:
        await ws.send(OFF_SCHEMA)
        await ws.send(OFF_SCHEMA)
        await ws.wait_closed()

    async with websockets.serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        async with websockets.connect(f"ws://127.0.0.1:{port}") as ws:
            with pytest.raises(ValidationError):
                await ws.recv()
            with pytest.raises(ValidationError):
                async for _frame in ws:
                    pass


@pytest.mark.django_db(transaction=True)
async def test_frames_from_the_real_application_pass_the_wrapper(communicator):
    await communicator.send_to(text_data="{not json")
    frame = await communicator.receive_json_from()
    assert frame["code"] == errors.InvalidJson.code
