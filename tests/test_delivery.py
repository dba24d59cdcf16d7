"""Session events (protocol v1.2) through the real ASGI app and registry: sequence, window, rate, replay, order."""

import asyncio
import uuid

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator

from sessions_app import delivery
from sessions_app.delivery import (
    EventInvalid,
    EventRateLimited,
    EventSessionNotFound,
    EventStream,
    EventTooLarge,
    asend_session_event,
)
from sessions_app.models import LiveSession, SessionEvent

from .communicators import connect, open_session, resume

pytestmark = pytest.mark.django_db(transaction=True)

RESUMABLE = {"resumable": True}


async def events_of(comm: WebsocketCommunicator, count: int) -> list[dict]:
    """The next `count` frames, each a session_event."""
    frames = [await comm.receive_json_from(timeout=5) for _ in range(count)]
    assert all(frame["type"] == "session_event" for frame in frames), frames
    return frames


async def push(session_id: str, count: int, *, start: int = 0, event: str = "tick") -> list[int]:
    return [await asend_session_event(session_id=session_id, event=event, data={"n": start + n}) for n in range(count)]


async def kept(session_id: str) -> list[int]:
    return [seq async for seq in SessionEvent.objects.filter(session_id=session_id).values_list("seq", flat=True)]


# --- Sequence and delivery to an attached session -------------------------------------------------


async def test_an_attached_session_gets_each_event_once_in_order_with_its_seq(workspace):
    comm, created = await open_session(workspace, ok=True)
    assert await push(created["session_id"], 3) == [1, 2, 3]
    frames = await events_of(comm, 3)
    assert [(f["seq"], f["event"], f["data"]) for f in frames] == [(n + 1, "tick", {"n": n}) for n in range(3)]
    assert {f["session_id"] for f in frames} == {created["session_id"]}
    assert frames[0]["sent_at"].endswith("Z")
    assert await comm.receive_nothing(timeout=0.2)
    assert await kept(created["session_id"]) == []  # a v1 session keeps no window
    await comm.disconnect()


async def test_seq_is_per_session(workspace):
    one, first = await open_session(workspace, ok=True)
    two, second = await open_session(workspace, ok=True)
    await push(first["session_id"], 2)
    assert await push(second["session_id"], 1) == [1]
    assert [f["seq"] for f in await events_of(one, 2)] == [1, 2]
    assert [f["seq"] for f in await events_of(two, 1)] == [1]
    await one.disconnect()
    await two.disconnect()


async def test_data_may_be_any_json_value_null_included(workspace):
    comm, created = await open_session(workspace, ok=True)
    values = [None, 0, "text", [1, "two"], {"nested": {"deep": True}}, 1.5]
    for value in values:
        await asend_session_event(session_id=created["session_id"], event="v", data=value)
    assert [f["data"] for f in await events_of(comm, len(values))] == values
    await comm.disconnect()


# --- Refusals: every sending path maps these ------------------------------------------------------


@pytest.mark.parametrize("name", ["", "Upper", "-lead", "has space", "a" * 65, "é", 7, None])
async def test_a_bad_event_name_is_refused_and_nothing_is_sent(workspace, name):
    comm, created = await open_session(workspace, ok=True)
    with pytest.raises(EventInvalid) as refused:
        await asend_session_event(session_id=created["session_id"], event=name, data=1)
    assert refused.value.field == "event"
    assert (await LiveSession.objects.aget(pk=created["session_id"])).last_seq == 0
    assert await comm.receive_nothing(timeout=0.1)
    await comm.disconnect()


async def test_missing_or_non_json_data_is_refused(workspace):
    comm, created = await open_session(workspace, ok=True)
    for data in (delivery.MISSING, float("nan"), float("inf"), {1, 2}, object()):
        with pytest.raises(EventInvalid) as refused:
            await asend_session_event(session_id=created["session_id"], event="x", data=data)
        assert refused.value.field == "data"
    assert (await LiveSession.objects.aget(pk=created["session_id"])).last_seq == 0
    await comm.disconnect()


async def test_a_frame_over_the_message_limit_is_refused_and_one_just_under_is_delivered(workspace, settings):
    settings.WSS_MAX_MESSAGE_BYTES = 1000
    comm, created = await open_session(workspace, ok=True)
    with pytest.raises(EventTooLarge):
        await asend_session_event(session_id=created["session_id"], event="big", data="x" * 1000)
    # The refusal counts the frame's largest seq, so any accepted frame fits whatever its seq.
    await asend_session_event(session_id=created["session_id"], event="big", data="x" * 800)
    [frame] = await events_of(comm, 1)
    assert frame["seq"] == 1
    await comm.disconnect()


async def test_an_unknown_or_ended_session_is_refused(workspace):
    with pytest.raises(EventSessionNotFound):
        await asend_session_event(session_id=uuid.uuid4(), event="x", data=1)
    with pytest.raises(EventSessionNotFound):
        await asend_session_event(session_id="not-a-uuid", event="x", data=1)
    comm, created = await open_session(workspace, ok=True)
    await comm.disconnect()  # a v1 session ends with its connection
    with pytest.raises(EventSessionNotFound):
        await asend_session_event(session_id=created["session_id"], event="x", data=1)


async def test_a_detached_session_past_its_grace_is_refused_though_not_yet_removed(workspace, settings):
    comm, created = await open_session(workspace, fields=RESUMABLE)
    await comm.disconnect(code=1006)
    settings.WSS_RESUME_GRACE_SECONDS = 0.01
    await asyncio.sleep(0.05)
    assert await LiveSession.objects.filter(pk=created["session_id"]).aexists()
    with pytest.raises(EventSessionNotFound):
        await asend_session_event(session_id=created["session_id"], event="x", data=1)


async def test_the_rate_is_bounded_per_session_with_a_retry_after(workspace, settings):
    settings.WSS_SESSION_EVENT_RATE = 3
    comm, created = await open_session(workspace, ok=True)
    other, second = await open_session(workspace, ok=True)
    assert await push(created["session_id"], 3) == [1, 2, 3]
    with pytest.raises(EventRateLimited) as limited:
        await asend_session_event(session_id=created["session_id"], event="x", data=1)
    assert limited.value.retry_after == 1
    assert await push(second["session_id"], 1) == [1]  # another session has its own bucket
    await asyncio.sleep(0.4)  # refills at 3 per second: one more token
    assert await push(created["session_id"], 1) == [4]  # the refused one took no seq
    assert [f["seq"] for f in await events_of(comm, 4)] == [1, 2, 3, 4]
    await comm.disconnect()
    await other.disconnect()


# --- The window ------------------------------------------------------------------------------------


async def test_a_resumable_session_keeps_the_last_window_of_events_and_it_goes_with_the_session(workspace, settings):
    settings.WSS_SESSION_EVENTS_KEPT = 3
    comm, created = await open_session(workspace, fields=RESUMABLE)
    await push(created["session_id"], 5)
    assert await kept(created["session_id"]) == [3, 4, 5]
    await comm.disconnect()  # 1000: the session ends
    assert not await LiveSession.objects.filter(pk=created["session_id"]).aexists()
    assert await SessionEvent.objects.acount() == 0  # the database cascade took the window


async def test_kept_zero_keeps_nothing_and_a_resume_reports_the_events_missed(workspace, settings):
    settings.WSS_SESSION_EVENTS_KEPT = 0
    comm, created = await open_session(workspace, fields=RESUMABLE)
    await comm.disconnect(code=1006)
    await push(created["session_id"], 2)
    assert await kept(created["session_id"]) == []
    again = await connect()
    reply = await resume(again, created["session_id"], created["resume_token"], last_seq=0)
    assert (reply["replayed"], reply["missed"]) == (0, True)
    assert await again.receive_nothing(timeout=0.2)
    await again.disconnect()


# --- Resume and replay -----------------------------------------------------------------------------


async def test_events_sent_while_detached_are_replayed_after_last_seq_then_live_ones_follow(workspace):
    comm, created = await open_session(workspace, fields=RESUMABLE)
    await push(created["session_id"], 2)
    assert [f["seq"] for f in await events_of(comm, 2)] == [1, 2]
    await comm.disconnect(code=1006)
    await push(created["session_id"], 3, start=2)  # seq 3, 4, 5 while detached

    again = await connect()
    reply = await resume(again, created["session_id"], created["resume_token"], last_seq=2, request_id=9)
    assert (reply["type"], reply["replayed"], reply["missed"], reply["request_id"]) == (
        "session_resumed",
        3,
        False,
        9,
    )
    replayed = await events_of(again, 3)
    assert [(f["seq"], f["data"]) for f in replayed] == [(3, {"n": 2}), (4, {"n": 3}), (5, {"n": 4})]
    await push(created["session_id"], 1, start=5)
    assert [f["seq"] for f in await events_of(again, 1)] == [6]
    await again.disconnect()


async def test_without_last_seq_nothing_is_replayed_and_the_reply_is_v1_1(workspace):
    comm, created = await open_session(workspace, fields=RESUMABLE)
    await comm.disconnect(code=1006)
    await push(created["session_id"], 2)
    again = await connect()
    reply = await resume(again, created["session_id"], created["resume_token"])
    assert "replayed" not in reply and "missed" not in reply
    assert await again.receive_nothing(timeout=0.2)
    await push(created["session_id"], 1)
    assert [f["seq"] for f in await events_of(again, 1)] == [3]  # live ones continue after the kept ones
    await again.disconnect()


async def test_a_window_overrun_replays_what_is_kept_and_reports_missed(workspace, settings):
    settings.WSS_SESSION_EVENTS_KEPT = 3
    comm, created = await open_session(workspace, fields=RESUMABLE)
    await comm.disconnect(code=1006)
    await push(created["session_id"], 5)
    again = await connect()
    reply = await resume(again, created["session_id"], created["resume_token"], last_seq=1)
    assert (reply["replayed"], reply["missed"]) == (3, True)
    assert [f["seq"] for f in await events_of(again, 3)] == [3, 4, 5]
    await again.disconnect()


async def test_a_client_up_to_date_gets_nothing_and_no_missed(workspace):
    comm, created = await open_session(workspace, fields=RESUMABLE)
    await push(created["session_id"], 2)
    await events_of(comm, 2)
    await comm.disconnect(code=1006)
    again = await connect()
    reply = await resume(again, created["session_id"], created["resume_token"], last_seq=2)
    assert (reply["replayed"], reply["missed"]) == (0, False)
    assert await again.receive_nothing(timeout=0.2)
    await again.disconnect()


@pytest.mark.parametrize("value", [-1, "1", 1.5, 2.0, True, None, [], {}, 2**53])
async def test_a_bad_last_seq_is_invalid_request_and_the_connection_stays(workspace, value):
    comm, created = await open_session(workspace, fields=RESUMABLE)
    await comm.disconnect(code=1006)
    again = await connect()
    reply = await resume(again, created["session_id"], created["resume_token"], last_seq=value, request_id="r")
    assert (reply["type"], reply["code"], reply["request_id"]) == ("error", "invalid_request", "r")
    assert "last_seq" in reply["message"]
    reply = await resume(again, created["session_id"], created["resume_token"], last_seq=0)
    assert reply["type"] == "session_resumed"  # the token was not spent by the refusal
    await again.disconnect()


async def test_after_a_takeover_only_the_new_connection_gets_events(workspace):
    old, created = await open_session(workspace, fields=RESUMABLE)
    await push(created["session_id"], 1)
    await events_of(old, 1)
    new = await connect()
    reply = await resume(new, created["session_id"], created["resume_token"], last_seq=1)
    assert (reply["replayed"], reply["missed"]) == (0, False)
    taken = await old.receive_json_from(timeout=5)
    assert taken["code"] == "session_taken_over"
    await push(created["session_id"], 2, start=1)
    assert [f["seq"] for f in await events_of(new, 2)] == [2, 3]
    assert await old.receive_output(timeout=5) == {"type": "websocket.close", "code": 4409}
    assert await old.receive_nothing(timeout=0.2)
    await new.disconnect()


async def test_events_pushed_during_a_resume_are_neither_lost_nor_doubled(workspace, settings):
    """A producer sends without pause while the client drops and resumes again and again."""
    settings.WSS_SESSION_EVENT_RATE = 0
    comm, created = await open_session(workspace, fields=RESUMABLE)
    session_id, token = created["session_id"], created["resume_token"]
    stop = asyncio.Event()
    sent: list[int] = []

    async def producer() -> None:
        while not stop.is_set():
            sent.append(await asend_session_event(session_id=session_id, event="tick", data=len(sent)))
            await asyncio.sleep(0)

    task = asyncio.ensure_future(producer())
    seen: list[int] = []
    for _ in range(5):
        while len(seen) < 5 + len(seen) // 2:  # read a few, then drop mid-stream
            seen.append((await events_of(comm, 1))[0]["seq"])
        await comm.disconnect(code=1006)
        comm = await connect()
        reply = await resume(comm, session_id, token, last_seq=seen[-1])
        assert reply["type"] == "session_resumed" and not reply["missed"], reply
        token = reply["resume_token"]
    stop.set()
    await task
    while len(seen) < len(sent):
        seen.append((await events_of(comm, 1))[0]["seq"])
    assert seen == list(range(1, len(sent) + 1)) and len(sent) > 10
    assert await comm.receive_nothing(timeout=0.2)
    await comm.disconnect()


# --- Ordering at the consumer ----------------------------------------------------------------------


async def crossed(session_id: str, seqs: list[int]) -> dict[int, delivery.Accepted]:
    """Record events with the registry, then hand the layer only the messages `seqs` names, in that order."""
    accepted = {}
    for _ in range(max(seqs)):
        one = await sync_to_async(delivery.event_record)(session_id=uuid.UUID(session_id), event="x", data=None)
        accepted[one.seq] = one
    row = await LiveSession.objects.aget(pk=session_id)
    for seq in seqs:
        message = {"type": "session.event", "session_id": session_id, "seq": seq, "frame": accepted[seq].frame}
        await get_channel_layer().send(row.channel_name, message)
    return accepted


async def test_crossed_messages_are_delivered_in_seq_order(workspace):
    for fields in ({}, RESUMABLE):
        comm, created = await open_session(workspace, fields=fields)
        await crossed(created["session_id"], [2, 3, 1])
        assert [f["seq"] for f in await events_of(comm, 3)] == [1, 2, 3]
        await comm.disconnect()


async def test_a_resumable_sessions_lost_message_is_filled_from_the_window_and_a_late_copy_dropped(workspace):
    comm, created = await open_session(workspace, fields=RESUMABLE)
    accepted = await crossed(created["session_id"], [2, 3])  # seq 1's message never comes
    assert [f["seq"] for f in await events_of(comm, 3)] == [1, 2, 3]
    channel = (await LiveSession.objects.aget(pk=created["session_id"])).channel_name
    late = {"type": "session.event", "session_id": created["session_id"], "seq": 1, "frame": accepted[1].frame}
    await get_channel_layer().send(channel, late)
    assert await comm.receive_nothing(timeout=0.3)
    await comm.disconnect()


async def test_a_v1_sessions_lost_message_is_skipped_after_the_wait(workspace, monkeypatch):
    monkeypatch.setattr(delivery, "GAP_WAIT_SECONDS", 0.2)
    comm, created = await open_session(workspace)
    await crossed(created["session_id"], [2, 3])  # seq 1's message never comes; nothing keeps it
    assert await comm.receive_nothing(timeout=0.1)
    assert [f["seq"] for f in await events_of(comm, 2)] == [2, 3]
    await comm.disconnect()


def test_the_stream_drops_repeats_and_holds_early_events_until_the_gap_closes():
    stream = EventStream(session_id=uuid.uuid4(), delivered=4, resumable=False)

    def arrived(seq: int) -> list[str]:
        return asyncio.run(stream.arrived(seq, f"f{seq}"))

    assert arrived(4) == []
    assert arrived(6) == [] and stream.waiting
    assert arrived(6) == []
    assert arrived(5) == ["f5", "f6"] and not stream.waiting
    assert arrived(8) == []
    assert asyncio.run(stream.gap_close()) == ["f8"] and stream.delivered == 8


# --- What a session that never has an event pays ----------------------------------------------------


def test_a_session_without_events_never_queries_the_window_to_open_resume_or_end(monkeypatch):
    """Opening, resuming (without last_seq), detaching, ending and reaping: no query touches the window table."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext
    from django.utils import timezone

    from sessions_app import instances, process, sessions
    from sessions_app.process import process_state

    monkeypatch.setattr(process, "_state", process.ProcessState())  # a fresh instance of its own
    from sessions_app.tokens import token_hash

    def session(resumable: bool) -> uuid.UUID:
        session_id = uuid.uuid4()
        token = token_hash("token") if resumable else ""
        insert = sessions.SessionInsert(
            session_id=session_id,
            workspace_dir="/tmp",
            created_at=timezone.now(),
            channel_name=f"c-{session_id}",
            client_addr="127.0.0.1:1",
            user_id=None,
            resume_token_hash=token,
        )
        sessions.registry_apply_sync([insert])
        return session_id

    with CaptureQueriesContext(connection) as queries:
        v1, resumable, reaped = session(False), session(True), session(True)
        sessions.session_detach_sync(session_id=resumable, channel_name=f"c-{resumable}")
        move = sessions.SessionResume(
            session_id=resumable,
            presented_hash=token_hash("token"),
            new_hash=token_hash("next"),
            channel_name="c-new",
            client_addr="127.0.0.1:2",
            user_id=None,
            grace_seconds=30,
        )
        assert sessions.session_resume_sync(move) is not None
        sessions.registry_apply_sync([sessions.SessionDelete(session_id=v1)])
        sessions.registry_apply_sync([sessions.SessionDelete(session_id=resumable, channel_name="c-new")])
        instances.instances_delete_sync([process_state().identity.boot_id], reason="test")
        instances.sessions_expire_sync(grace=0)
    assert not LiveSession.objects.filter(pk__in=[v1, resumable, reaped]).exists()
    touching = [query["sql"] for query in queries.captured_queries if "sessionevent" in query["sql"].lower()]
    assert touching == []


def test_the_stream_delivers_any_arrival_order_with_repeats_exactly_once_in_order():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    @settings(max_examples=200, deadline=None)
    @given(st.integers(min_value=1, max_value=40).flatmap(lambda n: st.permutations(list(range(1, n + 1)) * 2)))
    def check(arrivals: list[int]) -> None:
        stream = EventStream(session_id=uuid.uuid4(), delivered=0, resumable=False)

        async def deliver() -> list[str]:
            return [frame for seq in arrivals for frame in await stream.arrived(seq, f"f{seq}")]

        assert asyncio.run(deliver()) == [f"f{seq}" for seq in range(1, max(arrivals) + 1)]
        assert not stream.waiting

    check()


async def test_the_sync_function_refuses_to_run_on_an_event_loop_before_recording_anything(workspace):
    comm, created = await open_session(workspace, ok=True)
    with pytest.raises(RuntimeError, match="asend_session_event"):
        delivery.send_session_event(session_id=created["session_id"], event="x", data=1)
    assert (await LiveSession.objects.aget(pk=created["session_id"])).last_seq == 0
    await comm.disconnect()


def test_the_sync_function_sends_from_plain_synchronous_code(instance_with_sessions):
    _, [row] = instance_with_sessions(sessions=1)
    assert [delivery.send_session_event(session_id=row.pk, event="x", data=n) for n in range(2)] == [1, 2]


@pytest.mark.parametrize(
    "message",
    [{}, {"seq": "1", "frame": "{}"}, {"seq": 1}, {"seq": 1, "frame": None}, {"frame": "{}"}],
)
async def test_a_malformed_layer_message_is_dropped_and_the_connection_goes_on(workspace, message):
    comm, created = await open_session(workspace, ok=True)
    channel = (await LiveSession.objects.aget(pk=created["session_id"])).channel_name
    await get_channel_layer().send(channel, {"type": "session.event", "session_id": created["session_id"], **message})
    await asend_session_event(session_id=created["session_id"], event="after", data=1)
    [frame] = await events_of(comm, 1)
    assert (frame["seq"], frame["event"]) == (1, "after")
    await comm.disconnect()
