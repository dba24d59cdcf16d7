"""Resume (protocol v1.1) through the real ASGI application: detach, resume, take over, end, expire."""

import hashlib
import uuid
from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.utils import timezone

from sessions_app import consumers, instances, protocol, sessions, terminate
from sessions_app.models import LiveSession, ServerInstance
from sessions_app.process import process_state

from .communicators import connect, detached_session, new_session, open_session, resume

pytestmark = pytest.mark.django_db(transaction=True)

RESUMABLE = {"resumable": True}


async def request(comm: WebsocketCommunicator, frame: dict) -> dict:
    await comm.send_json_to(frame)
    return await comm.receive_json_from(timeout=5)


async def row(session_id: str) -> LiveSession | None:
    return await LiveSession.objects.filter(pk=session_id).afirst()


async def test_a_resumable_session_gets_a_token_and_the_grace_and_only_the_hash_is_stored(workspace):
    comm, reply = await open_session(workspace, fields=RESUMABLE)
    token = reply["resume_token"]
    assert len(token) >= 43 and reply["resume_grace_seconds"] == 30
    stored = await row(reply["session_id"])
    assert stored.resumable and stored.detached_at is None
    assert stored.resume_token_hash == hashlib.sha256(token.encode()).hexdigest()
    assert token not in {str(value) for value in stored.__dict__.values()}
    await comm.disconnect()


async def test_a_v1_new_session_reply_is_unchanged(workspace):
    comm, reply = await open_session(workspace)
    assert set(reply) == {"type", "session_id", "workspace_dir", "created_at"}
    assert not (await row(reply["session_id"])).resumable
    await comm.disconnect(code=1006)
    assert await row(reply["session_id"]) is None  # a non-resumable session ends with its connection, however it ends


@pytest.mark.parametrize("value", ["true", 1, None, [], {}])
async def test_resumable_must_be_a_json_boolean(communicator, workspace, value):
    reply = await request(
        communicator, {"type": "new_session", "workspace_dir": str(workspace), "resumable": value, "request_id": 1}
    )
    assert (reply["code"], reply["request_id"]) == ("invalid_request", 1)
    assert await LiveSession.objects.acount() == 0
    assert (await request(communicator, {"type": "new_session", "workspace_dir": str(workspace)}))["session_id"]


async def test_grace_zero_turns_resume_off_no_token_and_a_drop_ends_the_session(workspace, settings):
    settings.WSS_RESUME_GRACE_SECONDS = 0
    comm, reply = await open_session(workspace, fields=RESUMABLE)
    assert reply["resume_grace_seconds"] == 0 and "resume_token" not in reply
    await comm.disconnect(code=1006)
    assert await row(reply["session_id"]) is None


@pytest.mark.parametrize("code", [1006, 1001, 1011, 4000])
async def test_any_end_but_the_clients_1000_detaches_and_resume_restores_the_same_session(workspace, code):
    comm, created = await open_session(workspace, fields=RESUMABLE)
    old_channel = (await row(created["session_id"])).channel_name
    await comm.disconnect(code=code)
    stored = await row(created["session_id"])
    assert stored.detached_at is not None and stored.instance_id is None and stored.channel_name == ""

    again = await connect()
    reply = await resume(again, created["session_id"], created["resume_token"], request_id="r")
    assert reply["type"] == "session_resumed"
    for field in ("session_id", "workspace_dir", "created_at"):
        assert reply[field] == created[field]
    assert reply["resume_token"] != created["resume_token"] and reply["resume_grace_seconds"] == 30
    assert reply["request_id"] == "r"
    stored = await row(created["session_id"])
    assert stored.detached_at is None and stored.instance_id == process_state().identity.boot_id
    assert stored.channel_name not in ("", old_channel)
    await again.disconnect()


async def test_the_clients_close_1000_ends_a_resumable_session(workspace):
    comm, created = await open_session(workspace, fields=RESUMABLE)
    await comm.disconnect(code=1000)
    assert await row(created["session_id"]) is None
    again = await connect()
    assert (await resume(again, created["session_id"], created["resume_token"]))["code"] == "session_not_found"
    await again.disconnect()


async def test_a_fatal_protocol_error_detaches_rather_than_ends(workspace):
    comm, created = await open_session(workspace, fields=RESUMABLE)
    await comm.send_to(text_data="garbage")
    assert (await comm.receive_json_from(timeout=5))["code"] == "invalid_json"
    assert await comm.receive_output(timeout=5) == {"type": "websocket.close", "code": 4400}
    await comm.disconnect(code=1000)  # the client's echo of the server's close, not its own 1000
    assert (await row(created["session_id"])).detached_at is not None


async def test_the_spent_token_no_longer_resumes(workspace):
    created = await detached_session(workspace)
    first = await connect()
    renewed = await resume(first, created["session_id"], created["resume_token"])
    await first.disconnect(code=1006)
    second = await connect()
    assert (await resume(second, created["session_id"], created["resume_token"]))["code"] == "session_not_found"
    assert (await resume(second, created["session_id"], renewed["resume_token"]))["type"] == "session_resumed"
    await second.disconnect()


async def refusal(session_id: str, token: str, workspace) -> dict:
    comm = await connect()
    reply = await resume(comm, session_id, token, request_id=9)
    # The connection stays open and usable for a new session.
    assert (await new_session(comm, workspace))["type"] == "new_session"
    await comm.disconnect()
    return reply


async def test_no_oracle_every_refusal_is_one_and_the_same_frame(workspace, settings):
    """Unknown id, wrong token, spent token, expired, terminated, never resumable: one frame."""
    unknown = await refusal(str(uuid.uuid4()), "a" * 43, workspace)

    wrong_token = await detached_session(workspace)
    wrong = await refusal(wrong_token["session_id"], "b" * 43, workspace)

    spent_session = await detached_session(workspace)
    holder = await connect()
    await resume(holder, spent_session["session_id"], spent_session["resume_token"])
    spent = await refusal(spent_session["session_id"], spent_session["resume_token"], workspace)

    expired_session = await detached_session(workspace)
    await LiveSession.objects.filter(pk=expired_session["session_id"]).aupdate(
        detached_at=timezone.now() - timedelta(seconds=31)
    )
    expired = await refusal(expired_session["session_id"], expired_session["resume_token"], workspace)

    terminated_session = await detached_session(workspace)
    assert await terminate.session_terminate_request(session_id=terminated_session["session_id"])
    terminated = await refusal(terminated_session["session_id"], terminated_session["resume_token"], workspace)

    plain_comm, plain = await open_session(workspace)
    never = await refusal(plain["session_id"], "c" * 43, workspace)

    frames = [unknown, wrong, spent, expired, terminated, never]
    assert all(frame == unknown for frame in frames), frames
    assert unknown["code"] == "session_not_found" and unknown["request_id"] == 9
    # The refused resumes changed nothing: the rows that were there are still there.
    assert (await row(wrong_token["session_id"])).detached_at is not None
    assert (await row(plain["session_id"])).detached_at is None
    await holder.disconnect()
    await plain_comm.disconnect()


async def test_resume_on_a_connection_that_holds_a_session_is_session_exists(workspace):
    created = await detached_session(workspace)
    comm, held = await open_session(workspace)
    reply = await resume(comm, created["session_id"], created["resume_token"], request_id=2)
    assert (reply["code"], reply["request_id"]) == ("session_exists", 2)
    assert held["session_id"] in reply["message"]
    assert (await row(created["session_id"])).detached_at is not None  # untouched, token not spent
    await comm.disconnect()


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"session_id": "not-a-uuid", "resume_token": "x"},
        {"session_id": "{" + str(uuid.uuid4()) + "}", "resume_token": "x"},
        {"session_id": str(uuid.uuid4())},
        {"session_id": str(uuid.uuid4()), "resume_token": ""},
        {"session_id": str(uuid.uuid4()), "resume_token": 5},
        {"session_id": str(uuid.uuid4()), "resume_token": "x" * 257},
        {"session_id": 12, "resume_token": "x"},
    ],
)
async def test_bad_resume_fields_are_invalid_request_and_stay_open(communicator, workspace, fields):
    reply = await request(communicator, {"type": "resume_session", "request_id": "b", **fields})
    assert (reply["code"], reply["request_id"]) == ("invalid_request", "b")
    assert (await request(communicator, {"type": "new_session", "workspace_dir": str(workspace)}))["session_id"]


async def test_resume_while_attached_elsewhere_takes_over_with_4409_and_the_old_end_leaves_it(workspace):
    old, created = await open_session(workspace, fields=RESUMABLE)
    old_channel = (await row(created["session_id"])).channel_name
    new = await connect()
    reply = await resume(new, created["session_id"], created["resume_token"])
    assert reply["type"] == "session_resumed"
    frame = await old.receive_json_from(timeout=5)
    assert (frame["type"], frame["code"]) == ("error", "session_taken_over")
    assert await old.receive_output(timeout=5) == {"type": "websocket.close", "code": 4409}
    await old.disconnect(code=4409)
    stored = await row(created["session_id"])
    assert stored.detached_at is None and stored.channel_name not in ("", old_channel)
    # The new holder still ends it normally.
    await new.disconnect(code=1000)
    assert await row(created["session_id"]) is None


async def test_a_late_end_of_the_old_connection_cannot_remove_or_detach_the_moved_row(workspace):
    """The race the channel layer cannot close: the old end is written before its notice arrives."""
    _, created = await open_session(workspace, fields=RESUMABLE)
    old_channel = (await row(created["session_id"])).channel_name
    moved = await sessions.session_resume(
        session_id=uuid.UUID(created["session_id"]),
        resume_token=created["resume_token"],
        channel_name="new-channel",
        client_addr="",
        user_id=None,
    )
    assert moved.previous_channel == old_channel
    assert not await sessions.session_detach(session_id=moved.record.session_id, channel_name=old_channel)
    await sessions.session_close(session_id=moved.record.session_id, channel_name=old_channel)
    stored = await row(created["session_id"])
    assert (stored.channel_name, stored.detached_at) == ("new-channel", None)


async def test_end_session_removes_the_row_replies_and_keeps_the_connection(communicator, workspace):
    created = await request(communicator, {"type": "new_session", "workspace_dir": str(workspace), **RESUMABLE})
    reply = await request(communicator, {"type": "end_session", "request_id": 4})
    assert reply == {"type": "session_ended", "session_id": created["session_id"], "request_id": 4}
    assert await row(created["session_id"]) is None
    again = await connect()
    assert (await resume(again, created["session_id"], created["resume_token"]))["code"] == "session_not_found"
    await again.disconnect()
    # Still open: a new session on the same connection.
    assert (await request(communicator, {"type": "new_session", "workspace_dir": str(workspace)}))["session_id"]


async def test_end_session_ends_a_v1_session_too(communicator, workspace):
    created = await request(communicator, {"type": "new_session", "workspace_dir": str(workspace)})
    reply = await request(communicator, {"type": "end_session"})
    assert reply == {"type": "session_ended", "session_id": created["session_id"]}
    assert await LiveSession.objects.acount() == 0


async def test_end_session_without_a_session_is_no_session_and_stays_open(communicator, workspace):
    reply = await request(communicator, {"type": "end_session", "request_id": "e"})
    assert (reply["type"], reply["code"], reply["request_id"]) == ("error", "no_session", "e")
    assert (await request(communicator, {"type": "new_session", "workspace_dir": str(workspace)}))["session_id"]


async def test_resume_attempts_count_against_the_rate_limit(workspace, settings):
    settings.WSS_RATE_LIMIT, settings.WSS_RATE_LIMIT_BURST = 1, 5
    created = await detached_session(workspace)
    comm = await connect()
    frame = {"type": "resume_session", "session_id": created["session_id"], "resume_token": "guess"}
    for _ in range(5):
        await comm.send_json_to(frame)
    codes = [(await comm.receive_json_from(timeout=5))["code"] for _ in range(5)]
    assert codes == ["session_not_found"] * 5
    await comm.send_json_to({**frame, "resume_token": created["resume_token"]})
    assert (await comm.receive_json_from(timeout=5))["code"] == "rate_limited"
    assert (await row(created["session_id"])).detached_at is not None  # the right token, unread
    await comm.disconnect()


async def test_another_users_token_does_not_resume(workspace, django_user_model):
    created = await detached_session(workspace)
    owner = await django_user_model.objects.acreate_user("owner", password="x")
    await LiveSession.objects.filter(pk=created["session_id"]).aupdate(user=owner)
    comm = await connect()  # anonymous
    assert (await resume(comm, created["session_id"], created["resume_token"]))["code"] == "session_not_found"
    await comm.disconnect()


async def test_expiry_removes_detached_rows_past_the_grace_only(workspace):
    old, fresh = await detached_session(workspace), await detached_session(workspace)
    attached_comm, attached = await open_session(workspace, fields=RESUMABLE)
    await LiveSession.objects.filter(pk=old["session_id"]).aupdate(detached_at=timezone.now() - timedelta(seconds=31))
    assert await sync_to_async(instances.sessions_expire_sync)() == 1
    assert await row(old["session_id"]) is None
    assert await row(fresh["session_id"]) is not None and await row(attached["session_id"]) is not None
    await attached_comm.disconnect()


async def test_a_dead_instances_resumable_sessions_are_detached_by_the_reaper_and_v1_ones_removed(
    workspace, instance_with_sessions
):
    dead, _ = await sync_to_async(instance_with_sessions)(age=3600)
    resumable = await LiveSession.objects.acreate(
        workspace_dir="/w", channel_name="c1", instance=dead, resumable=True, resume_token_hash="h"
    )
    plain = await LiveSession.objects.acreate(workspace_dir="/w", channel_name="c2", instance=dead)
    assert await sync_to_async(instances.sessions_reap_sync)() == 1
    assert await row(str(plain.pk)) is None
    stored = await row(str(resumable.pk))
    assert stored.detached_at is not None and stored.instance_id is None
    assert not await ServerInstance.objects.filter(pk=dead.pk).aexists()


async def test_a_session_of_a_silent_instance_resumes_at_once_without_the_reaper(workspace):
    dead = await ServerInstance.objects.acreate(host="gone", pid=1)  # heartbeat fresh: not reapable yet
    token, digest = sessions.resume_token_new()
    stranded = await LiveSession.objects.acreate(
        workspace_dir=str(workspace),
        channel_name="dead-channel",
        instance=dead,
        resumable=True,
        resume_token_hash=digest,
    )
    comm = await connect()
    reply = await resume(comm, str(stranded.pk), token)
    assert reply["type"] == "session_resumed"
    assert (await row(str(stranded.pk))).instance_id == process_state().identity.boot_id
    await comm.disconnect()


async def test_terminating_a_detached_session_removes_it(workspace):
    created = await detached_session(workspace)
    assert await terminate.session_terminate_request(session_id=created["session_id"])
    assert await row(created["session_id"]) is None


async def test_terminating_an_attached_resumable_session_ends_it_with_4410(workspace):
    comm, created = await open_session(workspace, fields=RESUMABLE)
    assert await terminate.session_terminate_request(session_id=created["session_id"])
    assert (await comm.receive_json_from(timeout=5))["code"] == "session_terminated"
    assert await comm.receive_output(timeout=5) == {"type": "websocket.close", "code": 4410}
    await comm.disconnect(code=4410)
    assert await row(created["session_id"]) is None


def test_every_message_type_has_exactly_one_handler_and_knows_its_wire_name():
    assert set(consumers.HANDLERS) == set(protocol.MESSAGE_TYPES.values())
    assert all(protocol.MESSAGE_TYPES[cls.type] is cls for cls in consumers.HANDLERS)
    assert {"new_session", "resume_session", "end_session"} == set(protocol.MESSAGE_TYPES)


def test_declaring_a_message_type_twice_is_refused():
    with pytest.raises(ValueError, match="declared twice"):
        protocol.message_type(type("Again", (protocol.Message,), {"type": "new_session"}))


@pytest.mark.parametrize(("grace", "ok"), [(0, True), (30, True), (-1, False), ("30", False)])
def test_a_negative_or_non_numeric_grace_is_a_system_check_error(settings, grace, ok):
    from django.core import checks

    settings.WSS_RESUME_GRACE_SECONDS = grace
    found = [message.id for message in checks.run_checks(tags=["wss"]) if message.id == "wss.E013"]
    assert found == ([] if ok else ["wss.E013"])
