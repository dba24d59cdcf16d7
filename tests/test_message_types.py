"""Declared client message types: the registry and its checks (no database), then a test app's types
through the real ASGI application."""

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from sessions_app import message_types, protocol
from sessions_app.errors import InvalidRequest, UnknownType
from sessions_app.message_types import ClientMessage, Library, Registry

from .communicators import connect, expect_close, open_session

MSGAPP = "tests.msgapp.session_messages"
OBJECT = {"type": "object", "properties": {}}


async def handler(context, message) -> None:
    """A handler for the declaration tests."""


def declare(name: str = "thing", schema=OBJECT, function=handler, **options) -> Library:
    library = Library()
    library.message_type(name, schema=schema, **options)(function)
    return library


# --- declarations, checked when declared and when merged (no database) ---------------------


def test_a_declared_type_carries_its_schema_handler_and_docstring_title():
    (declared,) = declare(needs_session=False).declarations
    assert (declared.name, declared.handler, declared.needs_session) == ("thing", handler, False)
    assert declared.title == "A handler for the declaration tests."
    assert declared.module == "tests.test_message_types"


def test_a_handler_that_is_not_async_is_refused_when_declared():
    def sync_handler(context, message):
        """Not a coroutine function."""

    with pytest.raises(ImproperlyConfigured, match="async def"):
        declare(function=sync_handler)


@pytest.mark.parametrize(
    ("schema", "match"),
    [
        ({"type": "object", "properties": {"n": {"type": "integr"}}}, "not a valid JSON Schema"),
        ({"type": "object", "required": "n"}, "not a valid JSON Schema"),
        ({"type": "array"}, "must describe an object"),
        ({"type": "object", "properties": {"request_id": {"type": "string"}}}, "may not declare"),
        ({"type": "object", "properties": {"type": {"const": "x"}}}, "may not declare"),
    ],
)
def test_a_bad_schema_is_refused_when_declared(schema, match):
    with pytest.raises(ImproperlyConfigured, match=match):
        declare(schema=schema)


@pytest.mark.parametrize("name", ["", "Thing", "1thing", "thing-x", "x" * 65])
def test_a_bad_wire_name_is_refused_when_declared(name):
    with pytest.raises(ImproperlyConfigured, match="name must match"):
        declare(name)


def test_a_handler_without_a_docstring_or_an_example_of_another_type_is_refused():
    async def bare(context, message):
        pass

    with pytest.raises(ImproperlyConfigured, match="docstring"):
        declare(function=bare)
    with pytest.raises(ImproperlyConfigured, match="example"):
        declare(examples=[{"type": "other"}])


def test_a_name_declared_twice_is_refused_naming_both_apps():
    with pytest.raises(ImproperlyConfigured, match="'thing' is declared twice"):
        Registry([*declare().declarations, *declare().declarations])
    with pytest.raises(ImproperlyConfigured, match="'list_workspace' is declared twice"):
        Registry.from_modules(["workspace_files.session_messages", "tests.msgapp_duplicate.session_messages"])


def test_a_session_messages_module_without_register_is_refused():
    with pytest.raises(ImproperlyConfigured, match="register = Library"):
        Registry.from_modules(["tests.polling"])


def test_a_server_whose_apps_declare_a_type_twice_does_not_start():
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.msgapp_duplicate.settings"}
    result = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=root, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "ImproperlyConfigured: message type 'list_workspace' is declared twice" in result.stderr


def test_the_core_types_come_first_and_keep_their_own_parse():
    declared = message_types.registry()
    assert list(declared)[:3] == ["new_session", "resume_session", "end_session"]
    assert {name: declared[name].message for name in list(declared)[:3]} == dict(protocol.CORE_TYPES)
    assert "list_workspace" in declared  # the example app, installed in the project's settings
    with pytest.raises(InvalidRequest, match='"workspace_dir" must be an absolute path'):
        declared["new_session"].parse({"type": "new_session", "workspace_dir": "rel"}, None)


# --- schema validation (no database) -------------------------------------------------------


def parse(frame: dict) -> protocol.Message:
    declared = Registry.from_modules([MSGAPP])
    return protocol.decode(protocol.encode(frame), None, declared)


def test_a_valid_frame_becomes_an_immutable_message_of_its_own_fields():
    message = parse({"type": "msgapp_echo", "text": "hi", "times": 2, "request_id": "r"})
    assert message == ClientMessage(type="msgapp_echo", fields={"text": "hi", "times": 2}, request_id="r")
    with pytest.raises(TypeError):
        message.fields["text"] = "changed"


@pytest.mark.parametrize(
    ("frame", "text"),
    [
        ({"text": 5}, "The field /text is invalid: 5 is not of type 'string'."),
        ({"text": "a", "options": {"shout": "yes"}}, "The field /options/shout is invalid: 'yes' is not of type"),
        ({}, "The message is invalid: 'text' is a required property."),
        ({"text": "a", "colour": "blue"}, "The message is invalid: Additional properties are not allowed ('colour'"),
        ({"text": "a", "times": 4}, "The field /times is invalid: 4 is greater than the maximum of 3."),
        ({"text": "a", "times": True}, "The field /times is invalid: True is not of type 'integer'."),
        ({"text": "a", "options": {"a/b~": 1}}, "The field /options/a~1b~0 is invalid: 1 is not of type 'boolean'."),
    ],
)
def test_a_frame_that_fails_the_schema_is_invalid_request_naming_the_field(frame, text):
    with pytest.raises(InvalidRequest) as refused:
        parse({"type": "msgapp_echo", **frame, "request_id": 9})
    assert refused.value.message.startswith(text)
    assert refused.value.request_id == 9


def test_a_huge_bad_value_is_quoted_short():
    with pytest.raises(InvalidRequest) as refused:
        parse({"type": "msgapp_echo", "text": "x" * 10_000})
    assert len(refused.value.message) < 300


def test_unknown_type_lists_the_declared_types():
    with pytest.raises(UnknownType) as refused:
        parse({"type": "teleport"})
    assert refused.value.message.endswith(
        "msgapp_crash, msgapp_echo, msgapp_hold, msgapp_notify, msgapp_refuse, msgapp_who."
    )


# --- the test app installed, through the real ASGI application ------------------------------


@pytest.fixture
def msgapp(settings) -> None:
    """The test app installed: its types are declared until the test ends."""
    settings.INSTALLED_APPS = [*settings.INSTALLED_APPS, "tests.msgapp"]


@pytest.mark.django_db(transaction=True)
async def test_a_declared_type_replies_with_the_sessions_context_and_echoes_the_request_id(msgapp, workspace):
    from sessions_app.process import process_state

    comm, created = await open_session(workspace, ok=True)
    await comm.send_json_to(
        {"type": "msgapp_echo", "text": "ab", "times": 2, "options": {"shout": True}, "request_id": 4}
    )
    assert await comm.receive_json_from(timeout=5) == {
        "type": "msgapp_echo",
        "text": "ABAB",
        "session_id": created["session_id"],
        "workspace_dir": created["workspace_dir"],
        "user": None,
        "boot_id": str(process_state().identity.boot_id),
        "request_id": 4,
    }
    await comm.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_a_handler_sends_an_event_to_its_session_which_arrives_after_the_reply(msgapp, workspace):
    comm, created = await open_session(workspace, ok=True)
    await comm.send_json_to({"type": "msgapp_notify", "text": "hi", "request_id": "n1"})
    assert await comm.receive_json_from(timeout=5) == {"type": "msgapp_notify", "seq": 1, "request_id": "n1"}
    event = await comm.receive_json_from(timeout=5)
    assert (event["type"], event["session_id"], event["seq"], event["event"], event["data"]) == (
        "session_event",
        created["session_id"],
        1,
        "msgapp.note",
        {"text": "hi"},
    )
    await comm.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_the_handler_sees_the_user_the_connection_authenticated_as(msgapp, workspace, django_user_model):
    from asgiref.sync import sync_to_async

    from sessions_app.tokens import token_create

    user = await sync_to_async(django_user_model.objects.create_user)("ada", password="pw")
    _, raw = await sync_to_async(token_create)(user=user, name="t")
    comm, _ = await open_session(workspace, ok=True, headers=[(b"authorization", f"Bearer {raw}".encode())])
    await comm.send_json_to({"type": "msgapp_echo", "text": "hi"})
    assert (await comm.receive_json_from(timeout=5))["user"] == "ada"
    await comm.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_a_type_that_needs_a_session_is_no_session_without_one_and_the_connection_stays(msgapp):
    comm = await connect()
    await comm.send_json_to({"type": "msgapp_echo", "text": "a", "request_id": "e"})
    reply = await comm.receive_json_from(timeout=5)
    assert (reply["code"], reply["request_id"]) == ("no_session", "e")
    assert "'msgapp_echo' needs one" in reply["message"]
    await comm.send_json_to({"type": "msgapp_who"})
    assert (await comm.receive_json_from(timeout=5))["session_id"] is None
    await comm.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_a_schema_failure_is_invalid_request_and_the_connection_stays(msgapp, workspace):
    comm, _ = await open_session(workspace, ok=True)
    await comm.send_json_to({"type": "msgapp_echo", "text": "a", "options": {"shout": 1}, "request_id": "bad"})
    reply = await comm.receive_json_from(timeout=5)
    assert (reply["code"], reply["request_id"]) == ("invalid_request", "bad")
    assert reply["message"].startswith("The field /options/shout is invalid")
    await comm.send_json_to({"type": "msgapp_echo", "text": "still here"})
    assert (await comm.receive_json_from(timeout=5))["text"] == "still here"
    await comm.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_a_handlers_protocol_error_is_rendered_and_its_exception_is_internal_error(msgapp, caplog):
    comm = await connect()
    await comm.send_json_to({"type": "msgapp_refuse", "request_id": 1})
    refused = await comm.receive_json_from(timeout=5)
    assert (refused["code"], refused["message"], refused["request_id"]) == (
        "workspace_forbidden",
        "The test app refuses this.",
        1,
    )
    await comm.send_json_to({"type": "msgapp_crash", "request_id": 2})
    crashed = await comm.receive_json_from(timeout=5)
    assert (crashed["code"], crashed["request_id"]) == ("internal_error", 2)
    assert "the test app's bug" not in crashed["message"]
    assert any(record.exc_info and "the test app's bug" in str(record.exc_info[1]) for record in caplog.records)
    await comm.send_json_to({"type": "msgapp_who"})
    assert (await comm.receive_json_from(timeout=5))["type"] == "msgapp_who"
    await comm.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_unknown_type_names_the_installed_apps_types(msgapp):
    comm = await connect()
    await comm.send_json_to({"type": "teleport"})
    reply = await comm.receive_json_from(timeout=5)
    assert reply["code"] == "unknown_type"
    assert "list_workspace" in reply["message"]
    assert "msgapp_echo" in reply["message"]
    await expect_close(comm, 4400)


def test_the_declared_types_follow_the_installed_apps():
    from django.conf import settings
    from django.test import override_settings

    assert "msgapp_echo" not in message_types.registry()
    with override_settings(INSTALLED_APPS=[*settings.INSTALLED_APPS, "tests.msgapp"]):
        assert "msgapp_echo" in message_types.registry()
    assert "msgapp_echo" not in message_types.registry()


# --- the inbox's limits hold for declared types as for every frame ---------------------------


@pytest.mark.django_db(transaction=True)
async def test_declared_frames_over_the_rate_are_dropped_as_rate_limited(msgapp, settings):
    settings.WSS_RATE_LIMIT, settings.WSS_RATE_LIMIT_BURST = 0.01, 2
    comm = await connect()
    for n in range(3):
        await comm.send_json_to({"type": "msgapp_who", "request_id": n})
    replies = [await comm.receive_json_from(timeout=5) for _ in range(3)]
    assert [(reply.get("request_id"), reply["type"], reply.get("code")) for reply in replies] == [
        (0, "msgapp_who", None),
        (1, "msgapp_who", None),
        (None, "error", "rate_limited"),
    ]
    await comm.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_a_declared_frame_over_the_size_limit_is_refused_4413(msgapp, settings):
    settings.WSS_MAX_MESSAGE_BYTES = 1000
    comm = await connect()
    await comm.send_json_to({"type": "msgapp_echo", "text": "x" * 2000})
    assert (await comm.receive_json_from(timeout=5))["code"] == "message_too_large"
    await expect_close(comm, 4413)


@pytest.mark.django_db(transaction=True)
async def test_a_backlog_behind_a_slow_declared_handler_is_closed_4429(msgapp, settings, monkeypatch):
    from tests.msgapp import session_messages

    settings.WSS_MAX_QUEUED_FRAMES, settings.WSS_RATE_LIMIT = 3, 0
    monkeypatch.setattr(session_messages, "entered", asyncio.Event())
    monkeypatch.setattr(session_messages, "gate", asyncio.Event())
    comm = await connect()
    await comm.send_json_to({"type": "msgapp_hold", "request_id": 0})
    await asyncio.wait_for(session_messages.entered.wait(), 5)
    for n in range(1, 8):
        await comm.send_json_to({"type": "msgapp_who", "request_id": n})
    assert await comm.receive_nothing(timeout=0.3)  # the handler holds the connection's turn
    session_messages.gate.set()
    replies = [await comm.receive_json_from(timeout=5) for _ in range(4)]
    assert [(reply.get("request_id"), reply.get("code", reply["type"])) for reply in replies] == [
        (1, "msgapp_who"),
        (2, "msgapp_who"),
        (3, "msgapp_who"),
        (None, "rate_limit_exceeded"),
    ]
    await expect_close(comm, 4429)
