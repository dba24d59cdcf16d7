"""Management commands: reap_sessions (cron, deploy hooks) and terminate_sessions."""

from concurrent.futures import ThreadPoolExecutor
from io import StringIO

import psycopg
import pytest
from django.core.management import CommandError, call_command
from django.db import connections

from sessions_app.models import LiveSession

from .servers import suite_database_url as database_url

pytestmark = pytest.mark.django_db


def run(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out, stderr=StringIO())
    return out.getvalue()


def test_reap_sessions_removes_silent_instances_and_says_how_many_sessions_went(instance_with_sessions):
    instance_with_sessions(sessions=2, age=3600)
    alive, _ = instance_with_sessions(sessions=1, age=0)
    assert run("reap_sessions") == "Reaped 2 sessions.\n"
    assert list(LiveSession.objects.values_list("instance_id", flat=True)) == [alive.pk]


def test_reap_sessions_timeout_option_overrides_the_setting(instance_with_sessions):
    instance_with_sessions(sessions=1, age=120)
    assert run("reap_sessions", "--timeout", "300") == "Reaped 0 sessions.\n"
    assert run("reap_sessions", "--timeout", "60") == "Reaped 1 session.\n"


@pytest.mark.django_db(transaction=True)  # the terminate deletes on the registry writer's own connection
def test_terminate_sessions_deletes_the_rows_of_a_dead_instance(instance_with_sessions):
    dead, _ = instance_with_sessions(sessions=2, age=3600)
    ids = [str(pk) for pk in LiveSession.objects.filter(instance=dead).values_list("pk", flat=True)]
    assert run("terminate_sessions", *ids) == "Terminated 2 sessions.\n"
    assert not LiveSession.objects.exists()


def test_terminate_sessions_fails_on_an_unknown_id():
    with pytest.raises(CommandError, match="1 session"):
        run("terminate_sessions", "00000000-0000-4000-8000-000000000000")


def test_terminate_sessions_fails_on_something_that_is_not_an_id():
    with pytest.raises(CommandError, match="not a session id"):
        run("terminate_sessions", "nope")


@pytest.mark.production
@pytest.mark.django_db(transaction=True)
def test_concurrent_reapers_skip_the_rows_another_one_holds(production_services, instance_with_sessions):
    held, _ = instance_with_sessions(sessions=2, age=3600)
    free, _ = instance_with_sessions(sessions=3, age=3600)
    # Another reaper, mid-transaction, holds `held` locked.
    with psycopg.connect(database_url()) as other:
        other.execute("SELECT id FROM sessions_app_serverinstance WHERE id = %s FOR UPDATE", (held.pk,))
        reaper = ThreadPoolExecutor(max_workers=1)
        try:
            output = reaper.submit(run, "reap_sessions").result(timeout=10)  # waiting on the lock would hang
        finally:
            reaper.submit(connections.close_all)
            reaper.shutdown(wait=False)
        assert output == "Reaped 3 sessions.\n"
        assert set(LiveSession.objects.values_list("instance_id", flat=True)) == {held.pk}
    assert run("reap_sessions") == "Reaped 2 sessions.\n"  # released: the next pass takes it
    assert not free.sessions.exists()


@pytest.mark.django_db(transaction=True)
def test_terminate_sessions_exits_75_when_the_channel_layer_fails(unreachable_channel_layer, instance_with_sessions):
    live, _ = instance_with_sessions(sessions=1, age=0)
    session_id = str(LiveSession.objects.get(instance=live).pk)
    with pytest.raises(CommandError, match="not terminated") as failed:
        run("terminate_sessions", session_id)
    assert failed.value.returncode == 75
    assert LiveSession.objects.filter(pk=session_id).exists()


@pytest.mark.django_db(transaction=True)
async def test_send_session_event_prints_the_seq_and_the_session_gets_the_event(workspace):
    from asgiref.sync import sync_to_async

    from .communicators import open_session

    comm, reply = await open_session(workspace, ok=True)
    printed = await sync_to_async(run)("send_session_event", reply["session_id"], "notice", '{"text": "hi"}')
    assert printed == "1\n"
    frame = await comm.receive_json_from(timeout=5)
    assert (frame["type"], frame["seq"], frame["event"], frame["data"]) == (
        "session_event",
        1,
        "notice",
        {"text": "hi"},
    )
    assert await sync_to_async(run)("send_session_event", reply["session_id"], "bare") == "2\n"
    assert (await comm.receive_json_from(timeout=5))["data"] is None
    await comm.disconnect()


@pytest.mark.parametrize(
    ("args", "returncode"),
    [
        (["Bad Name", "1"], 65),
        (["ok", "{not json"], 65),
        (["ok", "NaN"], 65),
        (["ok", '"' + "x" * 70000 + '"'], 65),
    ],
)
def test_send_session_event_refusals_exit_with_their_code(instance_with_sessions, args, returncode):
    _, [row] = instance_with_sessions(sessions=1)
    with pytest.raises(CommandError) as refused:
        run("send_session_event", str(row.pk), *args)
    assert refused.value.returncode == returncode
    assert LiveSession.objects.get(pk=row.pk).last_seq == 0


def test_send_session_event_to_no_such_session_exits_66_and_over_the_rate_75(instance_with_sessions, settings):
    import uuid

    with pytest.raises(CommandError) as missing:
        run("send_session_event", str(uuid.uuid4()), "x")
    assert missing.value.returncode == 66
    settings.WSS_SESSION_EVENT_RATE = 1
    _, [row] = instance_with_sessions(sessions=1)
    assert run("send_session_event", str(row.pk), "x") == "1\n"
    with pytest.raises(CommandError) as limited:
        run("send_session_event", str(row.pk), "x")
    assert limited.value.returncode == 75
