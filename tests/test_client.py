"""The Python client and its command line, against a real daphne."""

import asyncio
import itertools
import json
import signal
import time
import uuid

import pytest

from sessions_app import errors, terminate
from sessions_app.client import (
    ConnectionClosed,
    HandshakeRefused,
    Session,
    SessionClient,
    backoff,
    connect,
    error_from_frame,
)
from sessions_app.models import LiveSession

from .polling import SLACK, wait_until, wait_until_sync
from .servers import run_cli


def test_every_protocol_code_maps_to_its_errors_py_class():
    for cls in errors.all_error_classes():
        error = error_from_frame({"type": "error", "code": cls.code, "message": "m", "request_id": 3})
        assert type(error) is cls
        assert (error.message, error.request_id) == ("m", 3)


def test_an_unknown_code_is_a_protocol_error_keeping_the_code():
    error = error_from_frame({"type": "error", "code": "brand_new", "message": "m"})
    assert type(error) is errors.ProtocolError
    assert error.code == "brand_new"


def test_session_round_trips_its_wire_fields():
    frame = {
        "type": "new_session",
        "session_id": str(uuid.uuid4()),
        "workspace_dir": "/srv/ws",
        "created_at": "2026-11-26T01:10:52.112Z",
        "request_id": 5,
    }
    session = Session.from_frame(frame)
    assert session.created_at.utcoffset().total_seconds() == 0
    assert session.as_json() == {key: value for key, value in frame.items() if key != "type"}


@pytest.mark.usefixtures("transactional_db")
@pytest.mark.live
async def test_new_session_returns_a_typed_session_and_the_row_lives_with_the_client(daphne_server, workspace):
    async with connect(daphne_server.url) as client:
        assert isinstance(client, SessionClient)
        session = await client.new_session(str(workspace), request_id="r1")
        assert isinstance(session, Session)
        assert session.session_id.version == 4
        assert (session.workspace_dir, session.request_id) == (str(workspace.resolve()), "r1")
        assert await LiveSession.objects.filter(pk=session.session_id).aexists()
    assert client.close_code == 1000

    async def row_gone() -> bool:
        return not await LiveSession.objects.filter(pk=session.session_id).aexists()

    await wait_until(row_gone, 10, what="the row removed")


@pytest.mark.usefixtures("transactional_db")
@pytest.mark.live
async def test_refusals_raise_the_protocol_class_and_the_connection_stays_usable(daphne_server, workspace):
    client = await connect(daphne_server.url)
    async with client:
        with pytest.raises(errors.WorkspaceNotFound) as missing:
            await client.new_session(str(workspace / "nope"), request_id=9)
        assert (missing.value.close_code, missing.value.request_id) == (None, 9)
        await client.new_session(str(workspace))
        with pytest.raises(errors.SessionExists):
            await client.new_session(str(workspace))


@pytest.mark.production
@pytest.mark.usefixtures("transactional_db", "production_services")
@pytest.mark.live
async def test_hold_raises_session_terminated_when_an_operator_ends_it(daphne_server, workspace):
    # Terminating from this process reaches daphne's consumer through Redis.
    async with connect(daphne_server.url) as client:
        session = await client.new_session(str(workspace))
        result = await terminate.session_terminate_request(session_id=session.session_id)
        assert result == terminate.TerminateResult.DELIVERED
        with pytest.raises(errors.SessionTerminated) as ended:
            await asyncio.wait_for(client.hold(), 10)
    assert ended.value.close_code == 4410
    assert client.close_code == 4410


@pytest.mark.live
async def test_a_refused_handshake_is_handshake_refused(daphne_server):
    with pytest.raises(HandshakeRefused) as refused:
        await connect(daphne_server.url.replace("/ws", "/elsewhere"))
    assert refused.value.status == 403


@pytest.mark.live
async def test_a_server_closing_without_an_error_frame_is_connection_closed(daphne_server, workspace):
    async with connect(daphne_server.url) as client:
        daphne_server.stop()
        with pytest.raises(ConnectionClosed) as closed:
            await client.hold()
    assert closed.value.code == 1006


@pytest.mark.usefixtures("transactional_db")
@pytest.mark.live
def test_cli_prints_the_session_holds_it_and_closes_on_ctrl_c(daphne_server, workspace):
    cli = run_cli(daphne_server.url, str(workspace), "--request-id", "cli")
    try:
        printed = json.loads(cli.stdout.readline())
        assert printed["workspace_dir"] == str(workspace.resolve())
        assert printed["request_id"] == "cli"
        assert LiveSession.objects.filter(pk=printed["session_id"]).exists()
        cli.send_signal(signal.SIGINT)
        assert cli.wait(timeout=20) == 0
    finally:
        cli.kill()
    wait_until_sync(
        lambda: not LiveSession.objects.filter(pk=printed["session_id"]).exists(), 10, what="the row removed"
    )


@pytest.mark.usefixtures("transactional_db")
@pytest.mark.live
def test_cli_reports_a_protocol_error_as_json_and_exits_1(daphne_server, workspace):
    cli = run_cli(daphne_server.url, str(workspace / "missing"))
    out, err = cli.communicate(timeout=20)
    assert cli.returncode == 1
    assert out == ""
    assert json.loads(err) == {
        "error": "workspace_not_found",
        "message": f"{str(workspace / 'missing')!r} does not exist or is not a directory.",
        "close_code": None,
    }


def test_cli_reports_an_unreachable_server_and_exits_2(tmp_path):
    from .servers import free_port

    cli = run_cli(f"ws://127.0.0.1:{free_port()}/ws", str(tmp_path))
    _, err = cli.communicate(timeout=20)
    assert cli.returncode == 2
    assert json.loads(err)["error"] == "connection_failed"


def test_the_backoff_grows_exponentially_to_its_cap_with_full_jitter():
    runs = [list(itertools.islice(backoff(initial=0.1, factor=2.0, cap=5.0), 10)) for _ in range(300)]
    for attempt in range(10):
        ceiling = min(5.0, 0.1 * 2**attempt)
        delays = [run[attempt] for run in runs]
        assert all(0 <= delay <= ceiling for delay in delays), attempt
        # Full jitter: the delays spread over the whole range, so clients do not return in step.
        assert min(delays) < ceiling * 0.1 and max(delays) > ceiling * 0.9, attempt
        assert len(set(delays)) == len(delays), attempt


@pytest.mark.usefixtures("transactional_db")
@pytest.mark.live
async def test_end_session_ends_it_and_keeps_the_connection(daphne_server, workspace):
    async with connect(daphne_server.url) as client:
        session = await client.new_session(str(workspace), resumable=True)
        assert await client.end_session(request_id=4) == session.session_id
        assert client.session is None
        assert not await LiveSession.objects.filter(pk=session.session_id).aexists()
        with pytest.raises(errors.NoSession):
            await client.end_session()
        again = await client.new_session(str(workspace))  # the same connection serves another
        assert await LiveSession.objects.filter(pk=again.session_id).aexists()


@pytest.mark.usefixtures("transactional_db")
@pytest.mark.live
async def test_hold_raises_session_not_found_once_the_grace_has_passed_without_a_server(servers, workspace):
    grace = 1
    server = servers(WSS_RESUME_GRACE_SECONDS=str(grace))
    async with connect(server.url) as client:
        await client.new_session(str(workspace), resumable=True)
        holding = asyncio.ensure_future(client.hold())
        server.stop()  # SIGKILL: nothing to resume on, at that URL or any other
        started = time.monotonic()
        with pytest.raises(errors.SessionNotFound):
            await asyncio.wait_for(holding, grace + SLACK)
    assert grace - 0.5 <= time.monotonic() - started <= grace + SLACK
    assert client.session is None


@pytest.mark.usefixtures("transactional_db")
@pytest.mark.live
async def test_hold_raises_session_taken_over_when_another_client_resumes_it(daphne_server, workspace):
    async with connect(daphne_server.url) as first, connect(daphne_server.url) as second:
        session = await first.new_session(str(workspace), resumable=True)
        holding = asyncio.ensure_future(first.hold())
        await second.resume_session(session.session_id, session.resume_token)
        with pytest.raises(errors.SessionTakenOver) as taken:
            await asyncio.wait_for(holding, 10)
        assert taken.value.close_code == 4409
        assert (await LiveSession.objects.aget(pk=session.session_id)).detached_at is None  # held by `second`
