"""The operators' admin: read-only live sessions with a count on the index."""

import uuid

import pytest
from django.utils import timezone

from sessions_app.models import LiveSession, ServerInstance

pytestmark = pytest.mark.django_db


@pytest.fixture
def sessions():
    instance = ServerInstance.objects.create(host="h", pid=1)
    return [
        LiveSession.objects.create(
            workspace_dir=f"/srv/ws/project-{n}", channel_name=f"c{n}", client_addr="127.0.0.1:1", instance=instance
        )
        for n in range(3)
    ]


def test_index_shows_the_live_session_count(admin_client, sessions):
    response = admin_client.get("/admin/")
    assert response.status_code == 200
    assert "3 live sessions (0 detached)" in response.content.decode()


def test_index_and_changelist_show_detached_sessions(admin_client, sessions):
    detached_at = timezone.now()
    LiveSession.objects.filter(pk=sessions[0].pk).update(
        instance=None, channel_name="", detached_at=detached_at, resumable=True, resume_token_hash="f" * 64
    )
    assert "3 live sessions (1 detached)" in admin_client.get("/admin/").content.decode()
    page = admin_client.get("/admin/sessions_app/livesession/").content.decode()
    assert f"detached since {detached_at:%Y-%m-%d %H:%M:%S} UTC" in page
    assert page.count(">attached<") == 2
    detail = admin_client.get(f"/admin/sessions_app/livesession/{sessions[0].pk}/change/").content.decode()
    assert "f" * 64 not in detail  # the token's hash is not shown
    only_detached = admin_client.get("/admin/sessions_app/livesession/", {"detached_at__isempty": "0"})
    assert str(sessions[0].id) in only_detached.content.decode()
    assert str(sessions[1].id) not in only_detached.content.decode()


@pytest.mark.django_db(transaction=True)
def test_terminate_action_removes_a_detached_session(admin_client, sessions):
    LiveSession.objects.filter(pk=sessions[0].pk).update(instance=None, channel_name="", detached_at=timezone.now())
    response = admin_client.post(
        "/admin/sessions_app/livesession/",
        {"action": "terminate_sessions", "_selected_action": [str(sessions[0].pk)], "index": "0"},
        follow=True,
    )
    assert "Terminated 1 session." in response.content.decode()
    assert not LiveSession.objects.filter(pk=sessions[0].pk).exists()


def test_changelist_lists_and_searches_sessions(admin_client, sessions):
    page = admin_client.get("/admin/sessions_app/livesession/").content.decode()
    for session in sessions:
        assert str(session.id) in page
    searched = admin_client.get("/admin/sessions_app/livesession/", {"q": "project-1"}).content.decode()
    assert str(sessions[1].id) in searched
    assert str(sessions[0].id) not in searched
    by_id = admin_client.get("/admin/sessions_app/livesession/", {"q": str(sessions[2].id)}).content.decode()
    assert str(sessions[2].id) in by_id
    assert str(sessions[0].id) not in by_id


def test_date_filter_narrows_the_list(admin_client, sessions):
    old = sessions[0]
    LiveSession.objects.filter(pk=old.pk).update(created_at=timezone.now() - timezone.timedelta(days=40))
    page = admin_client.get(
        "/admin/sessions_app/livesession/",
        {"created_at__gte": (timezone.now() - timezone.timedelta(days=1)).isoformat()},
    ).content.decode()
    assert str(sessions[1].id) in page
    assert str(old.id) not in page


def test_sessions_cannot_be_added_or_edited(admin_client, sessions):
    assert admin_client.get("/admin/sessions_app/livesession/add/").status_code == 403
    detail = admin_client.get(f"/admin/sessions_app/livesession/{sessions[0].pk}/change/")
    assert detail.status_code == 200
    assert 'name="_save"' not in detail.content.decode()
    response = admin_client.post(f"/admin/sessions_app/livesession/{sessions[0].pk}/change/", {"workspace_dir": "/etc"})
    assert response.status_code == 403
    assert LiveSession.objects.get(pk=sessions[0].pk).workspace_dir == "/srv/ws/project-0"


def test_admin_static_files_are_served_without_debug(client, settings):
    settings.DEBUG = False
    response = client.get("/static/admin/css/base.css")
    assert response.status_code == 200


def test_anonymous_users_are_sent_to_login(client):
    response = client.get("/admin/sessions_app/livesession/")
    assert response.status_code == 302
    assert "/admin/login/" in response["Location"]


def test_unknown_session_detail_is_not_a_crash(admin_client):
    response = admin_client.get(f"/admin/sessions_app/livesession/{uuid.uuid4()}/change/")
    assert response.status_code in (302, 404)


@pytest.mark.django_db(transaction=True)
def test_terminate_action_ends_the_selected_sessions(admin_client, sessions):
    # The instance in the fixture is alive; the consumer side is covered in test_services.
    ServerInstance.objects.update(heartbeat_at=timezone.now() - timezone.timedelta(hours=1))
    response = admin_client.post(
        "/admin/sessions_app/livesession/",
        {"action": "terminate_sessions", "_selected_action": [str(sessions[0].pk), str(sessions[1].pk)]},
        follow=True,
    )
    assert response.status_code == 200
    assert "Terminated 2 sessions." in response.content.decode()
    assert list(LiveSession.objects.values_list("pk", flat=True)) == [sessions[2].pk]


def test_staff_without_delete_permission_cannot_terminate(client, django_user_model, sessions):
    from django.contrib.auth.models import Permission

    user = django_user_model.objects.create_user("viewer", password="pw", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_livesession"))
    client.force_login(user)
    page = client.get("/admin/sessions_app/livesession/").content.decode()
    assert "terminate_sessions" not in page
    response = client.post(
        "/admin/sessions_app/livesession/",
        {"action": "terminate_sessions", "_selected_action": [str(sessions[0].pk)]},
    )
    assert response.status_code in (200, 302)
    assert LiveSession.objects.count() == 3


def test_changelist_shows_each_sessions_instance_and_whether_it_is_alive(admin_client):
    alive = ServerInstance.objects.create(host="alive-host", pid=11)
    dead = ServerInstance.objects.create(
        host="dead-host", pid=22, heartbeat_at=timezone.now() - timezone.timedelta(hours=1)
    )
    for instance in (alive, dead):
        LiveSession.objects.create(workspace_dir="/srv", channel_name="c", instance=instance)
    page = admin_client.get("/admin/sessions_app/livesession/").content.decode()
    assert str(alive) in page
    assert str(dead) in page
    assert page.count('alt="True"') == 1
    assert page.count('alt="False"') == 1
