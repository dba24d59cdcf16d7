"""Hostile and broken clients through the real ASGI app: every bad input gets its protocol answer.

Each case asserts the error code, the connection's fate (open, or the close code), that no
row was written, that a good session on another connection is untouched, and that the
server logged at most one warning line and no traceback.
"""

import json
import logging
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from channels.testing import WebsocketCommunicator
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from sessions_app.errors import all_error_classes
from sessions_app.models import LiveSession

from .communicators import assert_session_held, connect, new_session_frame, open_session
from .polling import wait_until

pytestmark = pytest.mark.django_db(transaction=True)

CLOSE_CODES = {cls.code: cls.close_code for cls in all_error_classes()}
LIMIT = 65536


@dataclass(frozen=True)
class Case:
    """One bad input: a text frame (or bytes), its expected code and connection fate."""

    id: str
    frame: str | bytes
    code: str
    close: int | None = None
    settings: dict = field(default_factory=dict)


def bad_frame(workspace_dir: object) -> str:
    return new_session_frame(workspace_dir, request_id="bad")


OVER_LIMIT_BODY = '{"type":"new_session","workspace_dir":"/tmp","pad":"'

CASES = [
    # workspace_dir, with WSS_WORKSPACE_ROOTS = [{root}]
    Case("dotdot-escape", bad_frame("{root}/../outside"), "workspace_forbidden"),
    Case("shared-prefix-sibling", bad_frame("{root}-evil"), "workspace_forbidden"),
    Case("symlink-inside-pointing-out", bad_frame("{root}/link-out"), "workspace_forbidden"),
    Case("symlink-loop", bad_frame("{root}/loop"), "workspace_not_found"),
    Case("nul-byte", bad_frame("{root}/a\x00b"), "invalid_request"),
    Case("lone-surrogate", bad_frame("{root}/\ud800"), "invalid_request"),
    Case("300-char-component", bad_frame("{root}/" + "c" * 300), "invalid_request"),
    Case("5000-char-path", bad_frame("/" + "/".join(["d" * 99] * 50)), "invalid_request"),
    Case("tilde", bad_frame("~"), "invalid_request"),
    Case("empty-path", bad_frame(""), "invalid_request"),
    Case("a-file", bad_frame("{root}/file"), "workspace_not_found"),
    Case("missing-path", bad_frame("{root}/missing"), "workspace_not_found"),
    Case("path-not-a-string", bad_frame(["/tmp"]), "invalid_request"),
    Case("request-id-too-big", '{"type":"new_session","workspace_dir":"/tmp","request_id":' + str(2**60) + "}",
         "invalid_request"),
    # frames
    Case("not-json", "hello", "invalid_json", 4400),
    Case("json-number", "42", "invalid_json", 4400),
    Case("json-string", '"new_session"', "invalid_json", 4400),
    Case("json-null", "null", "invalid_json", 4400),
    Case("json-array", '[{"type": "new_session"}]', "invalid_json", 4400),
    Case("100000-deep-nesting", "[" * 100_000 + "]" * 100_000, "invalid_json", 4400,
         settings={"WSS_MAX_MESSAGE_BYTES": 300_000}),
    Case("5000-digit-integer", '{"type":"new_session","workspace_dir":' + "9" * 5000 + "}", "invalid_json", 4400),
    Case("duplicate-keys", '{"type":"new_session","workspace_dir":"/tmp","workspace_dir":"/etc"}',
         "invalid_json", 4400),
    Case("empty-text-frame", "", "invalid_json", 4400),
    Case("binary-frame", b"\x00\xff", "unsupported_frame", 4415),
    Case("empty-binary-frame", b"", "unsupported_frame", 4415),
    Case("just-over-the-limit", OVER_LIMIT_BODY + "x" * (LIMIT - len(OVER_LIMIT_BODY) - 1) + '"}',
         "message_too_large", 4413),
    Case("no-type", '{"workspace_dir": "/tmp"}', "unknown_type", 4400),
    Case("unknown-type", '{"type": "rm_rf"}', "unknown_type", 4400),
    # v1.1: resume and end
    Case("resumable-not-a-boolean", '{"type":"new_session","workspace_dir":"/tmp","resumable":"yes"}',
         "invalid_request"),
    Case("resume-no-token", '{"type":"resume_session","session_id":"' + str(uuid.uuid4()) + '"}', "invalid_request"),
    Case("resume-bad-id", '{"type":"resume_session","session_id":"../../etc","resume_token":"x"}',
         "invalid_request"),
    Case("resume-huge-token", '{"type":"resume_session","session_id":"' + str(uuid.uuid4())
         + '","resume_token":"' + "x" * 10_000 + '"}', "invalid_request"),
    Case("resume-unknown-session", '{"type":"resume_session","session_id":"' + str(uuid.uuid4())
         + '","resume_token":"guess"}', "session_not_found"),
    Case("end-without-a-session", '{"type":"end_session"}', "no_session"),
]  # fmt: skip


@pytest.fixture
def roots(tmp_path: Path, settings) -> Path:
    """A workspace root with traps around it: a sibling sharing its prefix, links out, a loop, a file."""
    root = tmp_path / "ws"
    outside = tmp_path / "outside"
    for path in (root, outside, tmp_path / "ws-evil"):
        path.mkdir()
    (root / "link-out").symlink_to(outside)
    (root / "loop").symlink_to(root / "loop")
    (root / "file").write_text("not a directory")
    settings.WSS_WORKSPACE_ROOTS = [str(root)]
    return root


@pytest.fixture
async def good(roots: Path):
    """A good session, opened before the bad client arrives, on its own connection."""
    (roots / "good").mkdir()
    comm, reply = await open_session(roots / "good")
    assert reply["type"] == "new_session"
    yield comm, reply["session_id"]
    await comm.disconnect()


async def assert_good_session_untouched(good) -> None:
    comm, session_id = good
    assert await LiveSession.objects.filter(pk=session_id).aexists()
    await assert_session_held(comm)


async def send_frame(comm: WebsocketCommunicator, frame: str | bytes) -> None:
    # The ASGI event a server delivers; send_to() refuses empty frames.
    await comm.send_input(
        {"type": "websocket.receive", **({"bytes": frame} if isinstance(frame, bytes) else {"text": frame})}
    )


def assert_quiet_log(caplog) -> None:
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(loud) <= 1, [r.getMessage() for r in loud]
    assert all(r.levelno < logging.ERROR and r.exc_info is None for r in loud)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
async def test_bad_input_gets_its_code_and_fate_and_leaves_no_trace(case, roots, good, settings, caplog):
    for name, value in case.settings.items():
        setattr(settings, name, value)
    frame = case.frame.replace("{root}", str(roots)) if isinstance(case.frame, str) else case.frame
    comm = await connect()
    with caplog.at_level(logging.INFO):
        await send_frame(comm, frame)
        reply = await comm.receive_json_from(timeout=10)
        assert reply["type"] == "error"
        assert reply["code"] == case.code
        assert reply["message"]
        assert CLOSE_CODES[case.code] == case.close
        if case.close is None:
            # A frame that carried a valid request_id gets it back; the others have none to echo.
            assert reply.get("request_id") == ("bad" if '"request_id": "bad"' in frame else None)
            await send_frame(comm, bad_frame(""))  # still open: it answers again
            assert (await comm.receive_json_from(timeout=5))["code"] == "invalid_request"
            await comm.disconnect()
        else:
            assert await comm.receive_output(timeout=5) == {"type": "websocket.close", "code": case.close}
            await comm.disconnect(code=case.close)
    assert await LiveSession.objects.acount() == 1
    await assert_good_session_untouched(good)
    assert_quiet_log(caplog)


async def test_unknown_extra_fields_are_ignored_through_the_app(communicator, workspace):
    await communicator.send_json_to({"type": "new_session", "workspace_dir": str(workspace), "colour": {"r": 1}})
    assert (await communicator.receive_json_from(timeout=5))["type"] == "new_session"


async def test_a_flooding_connection_is_rate_limited_then_closed_4429_and_others_are_untouched(good, settings, caplog):
    settings.WSS_RATE_LIMIT = 0.001  # effectively no refill during the test
    settings.WSS_RATE_LIMIT_BURST = 2
    comm = await connect()
    codes = []
    with caplog.at_level(logging.INFO):
        for _ in range(5):
            await send_frame(comm, bad_frame(""))
            codes.append((await comm.receive_json_from(timeout=5))["code"])
        assert await comm.receive_output(timeout=5) == {"type": "websocket.close", "code": 4429}
        await send_frame(comm, bad_frame(""))  # already in flight when the close went out
        assert await comm.receive_nothing(timeout=0.2)
        await comm.disconnect(code=4429)
    assert codes == ["invalid_request"] * 2 + ["rate_limited"] * 2 + ["rate_limit_exceeded"]
    await assert_good_session_untouched(good)
    assert_quiet_log(caplog)


async def test_a_rate_limited_frame_is_dropped_unread(good, settings, roots):
    settings.WSS_RATE_LIMIT = 0.001
    settings.WSS_RATE_LIMIT_BURST = 1
    comm = await connect()
    await send_frame(comm, bad_frame(""))
    assert (await comm.receive_json_from(timeout=5))["code"] == "invalid_request"
    await send_frame(comm, new_session_frame(roots))
    assert (await comm.receive_json_from(timeout=5))["code"] == "rate_limited"
    assert await LiveSession.objects.acount() == 1
    await comm.disconnect()


# --- property: arbitrary frames --------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=10,
)  # fmt: skip
message_like = st.fixed_dictionaries(
    {"type": st.sampled_from(["new_session", "resume_session", "end_session", "", "New_Session", "error"])
     | st.text(max_size=12) | json_values},
    optional={
        "workspace_dir": st.sampled_from(["/", "/tmp", "/nonexistent", "", "~", "/\x00"]) | st.text(max_size=40)
        | json_values,
        "request_id": st.text(max_size=140) | st.integers() | json_values,
        "resumable": st.booleans() | json_values,
        "session_id": st.uuids().map(str) | st.text(max_size=40) | json_values,
        "resume_token": st.text(max_size=300) | json_values,
    },
)  # fmt: skip
frames = st.one_of(
    st.text(max_size=200),
    st.binary(max_size=200),
    json_values.map(json.dumps),
    message_like.map(json.dumps),
)
SUCCESS_FIELDS = {"type", "session_id", "workspace_dir", "created_at"}
RESUME_FIELDS = {"resume_token", "resume_grace_seconds"}


def assert_valid_reply(reply: dict) -> None:
    if reply["type"] == "error":
        assert set(reply) <= {"type", "code", "message", "request_id"}
        assert reply["code"] in CLOSE_CODES
        assert reply["code"] != "internal_error"
        assert isinstance(reply["message"], str) and reply["message"]
    else:
        # A random frame cannot resume (it has no token) and holds no session to end.
        assert reply["type"] == "new_session"
        assert SUCCESS_FIELDS <= set(reply) <= SUCCESS_FIELDS | RESUME_FIELDS | {"request_id"}


@pytest.fixture
def unlimited(settings) -> None:
    """No rate limit, so the good connection can be probed after every example."""
    settings.WSS_RATE_LIMIT = 0


@hypothesis_settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(frame=frames)
async def test_arbitrary_frames_get_one_valid_reply_and_never_crash_the_server(frame, unlimited, good, caplog):
    comm = await connect()
    await send_frame(comm, frame)
    output = await comm.receive_output(timeout=10)  # re-raises anything the application raised
    assert output["type"] == "websocket.send"
    reply = json.loads(output["text"])
    assert_valid_reply(reply)
    close_code = CLOSE_CODES.get(reply.get("code"))
    if close_code is not None:
        assert await comm.receive_output(timeout=5) == {"type": "websocket.close", "code": close_code}
    await comm.disconnect()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    await assert_good_session_untouched(good)
    assert await LiveSession.objects.acount() == 1


async def test_a_channel_layer_failure_under_a_consumer_keeps_its_connection_and_its_row(
    workspace, unreachable_channel_layer
):
    # The project's Redis layer against a port nothing listens on: the consumer's receive
    # fails for real. Its layer marks itself down and waits (sessions_app/layers.py); the
    # connection neither dies nor stops serving, and its row goes when it closes.
    from channels.layers import get_channel_layer
    from prometheus_client import REGISTRY

    def receive_failures() -> float:
        return REGISTRY.get_sample_value("wss_channel_layer_failures_total", {"operation": "receive"}) or 0.0

    before = receive_failures()
    comm, reply = await open_session(workspace)
    assert reply["type"] == "new_session"
    await wait_until(lambda: get_channel_layer().unavailable(), 10, what="the consumer's receive failing")
    assert receive_failures() > before
    await assert_session_held(comm)
    assert await LiveSession.objects.filter(pk=reply["session_id"]).aexists()
    await comm.disconnect(code=1000)
    assert not await LiveSession.objects.filter(pk=reply["session_id"]).aexists()
