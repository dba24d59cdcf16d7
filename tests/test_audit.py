"""Every terminate, from the admin, the API or a command, is recorded: who, when, which session."""

import getpass
import io
import logging
import uuid
from collections import Counter

import pytest
from django.contrib.admin.models import DELETION, LogEntry
from django.core.management import CommandError, call_command
from django.utils import timezone

from sessions_app.audit import terminate_recorded, terminate_summary
from sessions_app.models import LiveSession
from sessions_app.terminate import TerminateResult

pytestmark = pytest.mark.django_db


@pytest.fixture
def dead_session(db, instance_with_sessions) -> LiveSession:
    return instance_with_sessions(workspaces=["/srv/ws/a"], age=3600)[1][0]


def audit_lines(caplog) -> list[logging.LogRecord]:
    return [record for record in caplog.records if getattr(record, "event", None) == "session_terminate"]


def assert_recorded(caplog, session: LiveSession, user, via: str) -> None:
    entry = LogEntry.objects.get(object_id=str(session.pk))
    assert (entry.user, entry.action_flag) == (user, DELETION)
    assert entry.content_type.model == "livesession"
    assert via in entry.change_message
    assert abs((timezone.now() - entry.action_time).total_seconds()) < 60
    [line] = audit_lines(caplog)
    assert (line.session_id, line.actor) == (str(session.pk), user.username)
    assert via in line.via


@pytest.mark.django_db(transaction=True)  # the terminate deletes on the registry writer's own connection
def test_an_admin_terminate_is_in_the_admins_history_and_the_log(admin_client, admin_user, dead_session, caplog):
    with caplog.at_level(logging.INFO, logger="sessions_app.events"):
        action = {"action": "terminate_sessions", "_selected_action": [str(dead_session.pk)]}
        admin_client.post("/admin/sessions_app/livesession/", {**action, "index": "0"})  # the confirmation page
        assert LiveSession.objects.exists() and not audit_lines(caplog)
        admin_client.post("/admin/sessions_app/livesession/", {**action, "post": "yes"})
    assert not LiveSession.objects.exists()
    assert_recorded(caplog, dead_session, admin_user, "admin")
    assert str(dead_session.pk) in admin_client.get("/admin/").content.decode()  # under Recent actions


@pytest.mark.django_db(transaction=True)  # the terminate deletes on the registry writer's own connection
def test_an_api_terminate_is_recorded_under_its_caller(client, staff_user, dead_session, caplog):
    ops = staff_user("ops", "view_livesession", "delete_livesession")
    client.force_login(ops)
    with caplog.at_level(logging.INFO, logger="sessions_app.events"):
        assert client.delete(f"/api/sessions/{dead_session.pk}").status_code == 204
    assert_recorded(caplog, dead_session, ops, "sessions API")


@pytest.mark.django_db(transaction=True)  # the terminate deletes on the registry writer's own connection
def test_a_command_terminate_is_logged_under_the_operators_login(dead_session, caplog):
    with caplog.at_level(logging.INFO, logger="sessions_app.events"):
        call_command("terminate_sessions", str(dead_session.pk), stdout=None, stderr=None)
    [line] = audit_lines(caplog)
    assert (line.session_id, line.actor, line.via) == (
        str(dead_session.pk),
        f"operator:{getpass.getuser()}",
        "terminate_sessions command",
    )


def test_a_refused_or_missing_terminate_records_nothing(client, staff_user, dead_session, caplog):
    viewer = staff_user("viewer", "view_livesession")
    ops = staff_user("ops", "view_livesession", "delete_livesession")
    with caplog.at_level(logging.INFO, logger="sessions_app.events"):
        client.force_login(viewer)
        assert client.delete(f"/api/sessions/{dead_session.pk}").status_code == 403  # refused
        client.force_login(ops)
        assert client.delete(f"/api/sessions/{uuid.uuid4()}").status_code == 404  # missing
        with pytest.raises(CommandError, match="not found"):
            call_command("terminate_sessions", str(uuid.uuid4()), stdout=io.StringIO(), stderr=io.StringIO())
    assert LiveSession.objects.filter(pk=dead_session.pk).exists()
    assert not LogEntry.objects.exists()
    assert audit_lines(caplog) == []


def test_a_delivered_terminate_is_recorded_and_reported_as_delivered_not_as_ended(admin_user, dead_session):
    terminate_recorded(session_id=dead_session.pk, result=TerminateResult.DELIVERED, via="admin", user=admin_user)
    entry = LogEntry.objects.get(object_id=str(dead_session.pk))
    assert entry.change_message == "Terminate delivered through the admin."
    delivered, removed = TerminateResult.DELIVERED, TerminateResult.REMOVED
    assert terminate_summary(Counter({delivered: 2})) == "Terminate delivered to 2 sessions: their servers close them."
    assert terminate_summary(Counter({removed: 1, delivered: 1})) == (
        "Terminated 1 session. Terminate delivered to 1 session: its server closes it."
    )
    assert terminate_summary(Counter()) == "Terminated 0 sessions."
