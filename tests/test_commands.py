"""Management commands: reap_sessions (cron, deploy hooks) and terminate_sessions."""

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from sessions_app.models import LiveSession, ServerInstance

pytestmark = pytest.mark.django_db


def instance_with_sessions(*, sessions: int, age: float) -> ServerInstance:
    instance = ServerInstance.objects.create(host="h", pid=1, heartbeat_at=timezone.now() - timedelta(seconds=age))
    LiveSession.objects.bulk_create(
        LiveSession(workspace_dir="/tmp", channel_name=f"c{i}", instance=instance) for i in range(sessions)
    )
    return instance


def run(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out, stderr=StringIO())
    return out.getvalue()


def test_reap_sessions_removes_silent_instances_and_says_how_many_sessions_went():
    instance_with_sessions(sessions=2, age=3600)
    alive = instance_with_sessions(sessions=1, age=0)
    assert run("reap_sessions") == "Reaped 2 sessions.\n"
    assert list(LiveSession.objects.values_list("instance_id", flat=True)) == [alive.pk]


def test_reap_sessions_timeout_option_overrides_the_setting():
    instance_with_sessions(sessions=1, age=120)
    assert run("reap_sessions", "--timeout", "300") == "Reaped 0 sessions.\n"
    assert run("reap_sessions", "--timeout", "60") == "Reaped 1 session.\n"


def test_terminate_sessions_deletes_the_rows_of_a_dead_instance():
    dead = instance_with_sessions(sessions=2, age=3600)
    ids = [str(pk) for pk in LiveSession.objects.filter(instance=dead).values_list("pk", flat=True)]
    assert run("terminate_sessions", *ids) == "Terminated 2 of 2 sessions.\n"
    assert not LiveSession.objects.exists()


def test_terminate_sessions_fails_on_an_unknown_id():
    with pytest.raises(CommandError, match="1 session"):
        run("terminate_sessions", "00000000-0000-4000-8000-000000000000")


def test_terminate_sessions_fails_on_something_that_is_not_an_id():
    with pytest.raises(CommandError, match="not a session id"):
        run("terminate_sessions", "nope")


@pytest.mark.django_db(transaction=True)
def test_terminate_sessions_exits_75_when_the_channel_layer_fails(unreachable_channel_layer):
    live = instance_with_sessions(sessions=1, age=0)
    session_id = str(LiveSession.objects.get(instance=live).pk)
    with pytest.raises(CommandError, match="not terminated") as failed:
        run("terminate_sessions", session_id)
    assert failed.value.returncode == 75
    assert LiveSession.objects.filter(pk=session_id).exists()
