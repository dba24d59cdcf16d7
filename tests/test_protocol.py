"""Pure tests of decoding and reply building: no database, no event loop."""

import json
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest

from sessions_app import protocol
from sessions_app.errors import (
    InvalidJson,
    InvalidRequest,
    MessageTooLarge,
    ProtocolError,
    UnknownType,
    UnsupportedFrame,
)

pytestmark = pytest.mark.path_independent

LIMIT = 65536


def decode(obj_or_text) -> protocol.Message:
    text = obj_or_text if isinstance(obj_or_text, str) else json.dumps(obj_or_text)
    return protocol.decode(text, None)


def test_new_session_decodes_into_an_immutable_message():
    message = decode({"type": "new_session", "workspace_dir": "/tmp", "request_id": "r1"})
    assert message == protocol.NewSession(workspace_dir="/tmp", request_id="r1")
    with pytest.raises(AttributeError):
        message.workspace_dir = "/etc"


def test_unknown_extra_fields_are_ignored():
    assert decode({"type": "new_session", "workspace_dir": "/tmp", "colour": "blue"}).workspace_dir == "/tmp"


@pytest.mark.parametrize(
    ("frame", "error_class"),
    [
        ("not json", InvalidJson),
        ("", InvalidJson),
        ("[1, 2]", InvalidJson),
        ('"a string"', InvalidJson),
        ("42", InvalidJson),
        ("null", InvalidJson),
        ("[" * 30_000 + "]" * 30_000, InvalidJson),
        ('{"type": "new_session", "n": ' + "9" * 5000 + "}", InvalidJson),
        ('{"type": "new_session", "type": "other"}', InvalidJson),
        ("{}", UnknownType),
        ('{"type": 3}', UnknownType),
        ('{"type": "launch_missiles"}', UnknownType),
    ],
)
def test_bad_frames_raise_their_protocol_error(frame, error_class):
    with pytest.raises(error_class):
        decode(frame)


def test_100_000_deep_nesting_is_invalid_json_when_the_limit_lets_it_through():
    with pytest.raises(InvalidJson):
        protocol.decode("[" * 100_000 + "]" * 100_000, None)


def test_binary_frame_is_unsupported():
    with pytest.raises(UnsupportedFrame) as caught:
        protocol.decode(None, b"\x00\x01")
    assert caught.value.close_code == 4415


def test_frame_just_over_the_limit_is_too_large_and_at_the_limit_is_not():
    body = '{"type":"new_session","workspace_dir":"/tmp","pad":"'
    at_limit = body + "x" * (LIMIT - len(body) - 2) + '"}'
    assert len(at_limit.encode()) == LIMIT
    protocol.frame_size_check(at_limit, LIMIT)
    with pytest.raises(MessageTooLarge) as caught:
        protocol.frame_size_check(at_limit[:-2] + 'x"}', LIMIT)
    assert caught.value.close_code == 4413


def test_size_limit_counts_utf8_bytes_not_characters():
    # 20,000 three-byte characters: 60,000 bytes plus framing stays under; 22,000 goes over.
    under = json.dumps({"type": "new_session", "workspace_dir": "/tmp", "pad": "€" * 20_000}, ensure_ascii=False)
    over = json.dumps({"type": "new_session", "workspace_dir": "/tmp", "pad": "€" * 22_000}, ensure_ascii=False)
    assert len(over) < LIMIT
    protocol.frame_size_check(under, LIMIT)
    with pytest.raises(MessageTooLarge):
        protocol.frame_size_check(over, LIMIT)


@pytest.mark.parametrize(
    "workspace_dir",
    [None, 42, ["/tmp"], "", "relative/path", "~", "~/work", "/tmp/\x00evil", "/\ud800", "/" + "a" * 300, "/a" * 2500],
)
def test_bad_workspace_dir_is_an_invalid_request(workspace_dir):
    fields = {"type": "new_session", "request_id": 9}
    if workspace_dir is not None:
        fields["workspace_dir"] = workspace_dir
    with pytest.raises(InvalidRequest) as caught:
        decode(fields)
    assert caught.value.close_code is None
    assert caught.value.request_id == 9


@pytest.mark.parametrize("request_id", ["abc", 0, -5, 2**53 - 1, "x" * 128])
def test_valid_request_ids_are_kept(request_id):
    assert decode({"type": "new_session", "workspace_dir": "/tmp", "request_id": request_id}).request_id == request_id


@pytest.mark.parametrize("request_id", [1.5, True, {"a": 1}, [1], 2**53, "x" * 129])
def test_invalid_request_ids_are_refused_without_echo(request_id):
    with pytest.raises(InvalidRequest) as caught:
        decode({"type": "new_session", "workspace_dir": "/tmp", "request_id": request_id})
    assert caught.value.request_id is None


def test_unknown_type_echoes_a_readable_request_id():
    with pytest.raises(UnknownType) as caught:
        decode({"type": "nope", "request_id": "abc"})
    assert protocol.error_reply(caught.value) == {
        "type": "error",
        "code": "unknown_type",
        "message": caught.value.message,
        "request_id": "abc",
    }


def test_error_reply_leaves_out_a_missing_request_id():
    assert protocol.error_reply(ProtocolError("m")) == {"type": "error", "code": "invalid_request", "message": "m"}


def test_new_session_reply_fields():
    session_id = uuid.uuid4()
    moment = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=timezone(timedelta(hours=2)))
    reply = protocol.new_session_reply(session_id=session_id, workspace_dir="/w", created_at=moment, request_id=None)
    assert reply == {
        "type": "new_session",
        "session_id": str(session_id),
        "workspace_dir": "/w",
        "created_at": "2026-01-02T01:04:05.678Z",
    }


def test_timestamps_are_utc_with_z():
    assert protocol.format_timestamp(datetime(2026, 5, 6, 7, 8, 9, tzinfo=UTC)) == "2026-05-06T07:08:09.000Z"


def test_encode_keeps_lone_surrogates_as_ascii_escapes():
    text = protocol.encode({"type": "error", "code": "x", "message": "\ud800"})
    assert text.isascii()
    assert json.loads(text)["message"] == "\ud800"


# Path limits count UTF-8 bytes: "é" is two. A 255-byte name is 128 characters here, and a
# 4096-byte path 2064: a limit counted in characters would let both boundaries through.
NAME_255 = "é" * 127 + "a"
CHUNK = "/" + "é" * 127  # 255 bytes


@pytest.mark.parametrize(
    ("workspace_dir", "accepted"),
    [
        ("/" + NAME_255, True),
        ("/" + NAME_255 + "b", False),
        ("/" + "é" * 128, False),
        (CHUNK * 16 + "/" + "a" * 15, True),
        (CHUNK * 16 + "/" + "a" * 16, False),
    ],
    ids=["name-255-bytes", "name-256-bytes", "name-256-bytes-all-2-byte", "path-4096-bytes", "path-4097-bytes"],
)
def test_path_limits_are_utf8_bytes_at_exactly_4096_and_255(workspace_dir, accepted):
    frame = {"type": "new_session", "workspace_dir": workspace_dir}
    if accepted:
        assert decode(frame).workspace_dir == workspace_dir
    else:
        with pytest.raises(InvalidRequest):
            decode(frame)


# --- v1.2: last_seq, the replay count, session_event ------------------------------------------------

RESUME = {"type": "resume_session", "session_id": str(uuid.UUID(int=1, version=4)), "resume_token": "t"}


@pytest.mark.parametrize("last_seq", [0, 1, 2**53 - 1])
def test_resume_session_keeps_a_valid_last_seq(last_seq):
    message = protocol.decode(json.dumps({**RESUME, "last_seq": last_seq}), None)
    assert message.last_seq == last_seq


def test_resume_session_without_last_seq_has_none():
    assert protocol.decode(json.dumps(RESUME), None).last_seq is None


@pytest.mark.parametrize("last_seq", [-1, 2**53, 1.0, 1.5, "1", True, False, None, [], {}])
def test_a_bad_last_seq_is_an_invalid_request(last_seq):
    with pytest.raises(InvalidRequest, match="last_seq"):
        protocol.decode(json.dumps({**RESUME, "last_seq": last_seq, "request_id": 4}), None)


def test_session_resumed_carries_the_replay_count_only_when_asked():
    fields = {
        "session_id": uuid.uuid4(),
        "workspace_dir": "/srv",
        "created_at": datetime.now(UTC),
        "resume": protocol.ResumeGrant("tok", 30),
        "request_id": None,
    }
    assert "replayed" not in protocol.session_resumed_reply(**fields)
    reply = protocol.session_resumed_reply(**fields, replay=protocol.ReplayCount(replayed=3, missed=True))
    assert (reply["replayed"], reply["missed"]) == (3, True)


def test_session_event_frame_fields():
    session_id = uuid.uuid4()
    sent_at = datetime(2026, 12, 3, 8, 0, 0, 123456, tzinfo=UTC)
    frame = protocol.session_event_reply(
        session_id=session_id, seq=7, event="build.finished", data=None, sent_at=sent_at
    )
    assert frame == {
        "type": "session_event",
        "session_id": str(session_id),
        "seq": 7,
        "event": "build.finished",
        "data": None,
        "sent_at": "2026-12-03T08:00:00.123Z",
    }


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        ("a", True),
        ("build.finished", True),
        ("x_1-2.y", True),
        ("a" * 64, True),
        ("a" * 65, False),
        ("", False),
        ("Build", False),
        (".a", False),
        ("a b", False),
        ("a\n", False),
    ],
)
def test_event_names(name, valid):
    assert (protocol.EVENT_NAME.fullmatch(name) is not None) is valid
