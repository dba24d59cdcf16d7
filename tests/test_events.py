"""Structured logs: one line per connect, session created, session ended and refusal."""

import asyncio
import json
import logging
import time
import uuid

import pytest
import websockets
from channels.testing import WebsocketCommunicator

from sessions_app import events, terminate
from sessions_app.process import process_state
from wssproject.asgi import application

from .communicators import connect, detached_session, open_session, resume, ws_open_session
from .polling import wait_until


def event_records(caplog, name: str) -> list[logging.LogRecord]:
    return [record for record in caplog.records if getattr(record, "event", None) == name]


@pytest.fixture
def events_caplog(caplog):
    caplog.set_level(logging.INFO, logger="sessions_app.events")
    return caplog


@pytest.mark.django_db(transaction=True)
async def test_a_session_logs_connect_created_and_ended_with_reason_and_duration(events_caplog, workspace):
    started = time.monotonic()
    comm, reply = await open_session(workspace)
    session_id = reply["session_id"]
    await asyncio.sleep(0.1)  # a session that lasts a known while
    await comm.disconnect(code=1000)
    lasted = time.monotonic() - started

    instance = str(process_state().identity.boot_id)
    (connect,) = event_records(events_caplog, "connect")
    (created,) = event_records(events_caplog, "session_created")
    (ended,) = event_records(events_caplog, "session_ended")
    assert connect.instance == created.instance == ended.instance == instance
    assert created.session_id == ended.session_id == session_id
    assert created.client == ended.client == connect.client
    assert created.workspace_dir == str(workspace.resolve())
    assert ended.reason == "client_close"
    assert ended.close_code == 1000
    assert 0.1 <= ended.duration_seconds <= lasted + 0.01  # rounded to the millisecond
    assert f"session_id={session_id}" in ended.getMessage()
    assert "reason=client_close" in ended.getMessage()


@pytest.mark.django_db(transaction=True)
async def test_terminate_logs_session_ended_as_terminated(events_caplog, workspace):
    comm, reply = await open_session(workspace)
    session_id = reply["session_id"]
    await terminate.session_terminate_request(session_id=session_id)
    assert (await comm.receive_json_from(timeout=5))["code"] == "session_terminated"
    await comm.disconnect(code=4410)
    (ended,) = event_records(events_caplog, "session_ended")
    assert (ended.session_id, ended.reason) == (session_id, "terminated")


@pytest.mark.django_db(transaction=True)
async def test_an_origin_refusal_is_one_warning_with_client_and_origin(events_caplog, settings):
    settings.DEBUG = False
    comm = WebsocketCommunicator(application, "/ws", headers=[(b"origin", b"http://evil.example")])
    comm.scope["client"] = ("127.0.0.1", 5555)  # the app reads the scope when connect() first yields
    assert not (await comm.connect())[0]
    await comm.disconnect()  # end the refused consumer as a server would
    (refused,) = event_records(events_caplog, "refused")
    assert refused.levelno == logging.WARNING
    assert refused.reason == "origin"
    assert refused.detail == "http://evil.example"
    assert refused.client == "127.0.0.1:5555"


@pytest.mark.parametrize(
    "close_code, closing_error, reason",
    [
        (1000, None, "client_close"),
        (1001, None, "client_close"),
        (4000, None, "client_close"),
        (1006, None, "drop"),
        (1011, None, "ping_timeout"),
        (4400, "invalid_json", "protocol_error"),
        (1006, "message_too_large", "protocol_error"),
        (4410, "session_terminated", "terminated"),
        (4503, "server_shutting_down", "shutdown"),
        (4503, "session_lost", "lost"),
    ],
)
def test_end_reason_comes_from_the_close_code_and_the_servers_own_close(close_code, closing_error, reason):
    assert events.end_reason(close_code, closing_error=closing_error) == reason


def test_plain_lines_quote_values_with_spaces(caplog):
    caplog.set_level(logging.INFO, logger="sessions_app.events")
    events.sessions_reaped(2)
    events._emit("x", detail="a b", empty="", plain="c")
    assert 'detail="a b" empty="" plain=c' in caplog.records[-1].getMessage()
    assert caplog.records[0].count == 2


@pytest.mark.live
async def test_wss_log_format_json_writes_one_json_object_per_line(server_factory, workspace):
    server = server_factory(env={"WSS_LOG_FORMAT": "json"})
    async with websockets.connect(server.url) as ws:
        session_id = await ws_open_session(ws, workspace)
    await wait_until(lambda: '"session_ended"' in server.log(), 10, what="the session_ended line")
    lines = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    # One line per event: not repeated through daphne's root handler in another format.
    assert sum("session_created" in line for line in server.log().splitlines()) == 1
    by_event = {line.get("event"): line for line in lines}
    assert {"connect", "session_created", "session_ended"} <= set(by_event)
    ended = by_event["session_ended"]
    assert ended["session_id"] == session_id
    assert ended["reason"] == "client_close"
    assert ended["level"] == "INFO" and ended["logger"] == "sessions_app.events"
    assert uuid.UUID(ended["instance"]) and ended["client"].startswith("127.0.0.1:")
    assert isinstance(ended["duration_seconds"], float)
    assert None not in ended.values(), ended  # no empty record attributes passed off as fields


@pytest.mark.django_db(transaction=True)
async def test_resume_logs_detached_resumed_and_taken_over(events_caplog, workspace):
    created = await detached_session(workspace)
    (detached,) = event_records(events_caplog, "session_detached")
    assert (detached.session_id, detached.reason, detached.close_code) == (created["session_id"], "drop", 1006)
    assert not event_records(events_caplog, "session_ended")

    first = await connect()
    token = (await resume(first, created["session_id"], created["resume_token"]))["resume_token"]
    second = await connect()
    await resume(second, created["session_id"], token)
    await first.receive_json_from(timeout=5)
    resumed = event_records(events_caplog, "session_resumed")
    assert [record.taken_over for record in resumed] == ["false", "true"]
    (taken_over,) = event_records(events_caplog, "session_taken_over")
    assert taken_over.session_id == created["session_id"]
    assert created["resume_token"] not in events_caplog.text and token not in events_caplog.text
    await first.disconnect(code=4409)
    await second.disconnect()
