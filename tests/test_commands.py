"""Management commands: reap_sessions (cron, deploy hooks) and terminate_sessions."""

from concurrent.futures import ThreadPoolExecutor
from io import StringIO

import psycopg
import pytest
from django.core.management import CommandError, call_command
from django.db import connections

from sessions_app.models import LiveSession

from .servers import test_database_url as database_url

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
