"""The sessions API: list, filter, paginate, read, terminate; staff only; JSON errors."""

import uuid

import pytest
from asgiref.sync import sync_to_async
from django.test import Client
from django.utils import timezone

from sessions_app.models import LiveSession, ServerInstance

from .communicators import open_session


@pytest.fixture
def sessions(db, instance_with_sessions) -> list[LiveSession]:
    """Five rows on one live instance, on two workspaces (three on project-0, two on project-1)."""
    return instance_with_sessions(workspaces=["/srv/ws/project-0", "/srv/ws/project-1"] * 2 + ["/srv/ws/project-0"])[1]


def test_list_is_paginated_and_carries_the_instance(admin_client, sessions):
    body = admin_client.get("/api/sessions", {"page_size": 2}).json()
    assert body["count"] == 5
    assert len(body["results"]) == 2
    assert "page=2" in body["next"]
    first = body["results"][0]
    assert set(first) == {
        "id",
        "workspace_dir",
        "created_at",
        "client_addr",
        "user",
        "state",
        "resumable",
        "detached_at",
        "instance",
    }
    assert (first["state"], first["resumable"], first["detached_at"]) == ("attached", False, None)
    assert first["instance"]["alive"] is True
    page_3 = admin_client.get("/api/sessions", {"page_size": 2, "page": 3}).json()
    ids = {row["id"] for page in (body, page_3) for row in page["results"]}
    assert len(ids) == 3


def test_list_filters_by_workspace(admin_client, sessions):
    body = admin_client.get("/api/sessions/", {"workspace": "/srv/ws/project-1"}).json()
    assert body["count"] == 2
    assert {row["workspace_dir"] for row in body["results"]} == {"/srv/ws/project-1"}


def test_list_filters_by_instance_and_rejects_a_bad_one(admin_client, sessions):
    other = ServerInstance.objects.create(host="h2", pid=2)
    assert admin_client.get("/api/sessions", {"instance": str(other.pk)}).json()["count"] == 0
    bad = admin_client.get("/api/sessions", {"instance": "nope"})
    assert bad.status_code == 400
    assert "instance" in bad.json()


def test_one_session_by_id_and_404_for_unknown_or_malformed(admin_client, sessions):
    one = admin_client.get(f"/api/sessions/{sessions[0].pk}")
    assert one.status_code == 200
    assert one.json()["id"] == str(sessions[0].pk)
    for missing in (uuid.uuid4(), "not-a-uuid"):
        response = admin_client.get(f"/api/sessions/{missing}")
        assert response.status_code == 404
        assert "No live session" in response.json()["detail"]


def test_anonymous_and_non_staff_users_are_refused_with_json(client, django_user_model, sessions):
    # The instance is dead: a DELETE that ran would remove the row at once, so a refusal shows.
    ServerInstance.objects.update(heartbeat_at=timezone.now() - timezone.timedelta(hours=1))
    anonymous = client.get("/api/sessions")
    assert anonymous.status_code == 401
    assert anonymous["WWW-Authenticate"].startswith("Bearer")
    assert "credentials" in anonymous.json()["detail"]
    client.force_login(django_user_model.objects.create_user("plain", password="pw"))
    assert client.get("/api/sessions").status_code == 403
    assert client.delete(f"/api/sessions/{sessions[0].pk}").status_code == 403
    assert LiveSession.objects.filter(pk=sessions[0].pk).exists()
    assert LiveSession.objects.count() == 5


def test_pages_hold_100_rows_by_default_and_page_size_is_capped_at_1000(admin_client, instance_with_sessions):
    instance_with_sessions(sessions=1001)
    default = admin_client.get("/api/sessions").json()
    assert (default["count"], len(default["results"])) == (1001, 100)
    capped = admin_client.get("/api/sessions", {"page_size": 5000}).json()
    assert len(capped["results"]) == 1000
    assert "page=2" in capped["next"]


def test_unknown_api_paths_are_json_404(admin_client):
    response = admin_client.get("/api/nothing-here")
    assert response.status_code == 404
    assert response.json() == {"detail": "Not found."}


def test_methods_other_than_get_and_delete_are_405(admin_client, sessions):
    posted = admin_client.post("/api/sessions", {}, content_type="application/json")
    assert (posted.status_code, posted.json()) == (405, {"detail": 'Method "POST" not allowed.'})
    response = admin_client.put(f"/api/sessions/{sessions[0].pk}", {}, content_type="application/json")
    assert (response.status_code, response.json()) == (405, {"detail": 'Method "PUT" not allowed.'})


@pytest.mark.django_db(transaction=True)
def test_delete_of_a_dead_instances_session_removes_it_and_unknown_is_404(admin_client, sessions):
    ServerInstance.objects.update(heartbeat_at=timezone.now() - timezone.timedelta(hours=1))
    assert admin_client.delete(f"/api/sessions/{sessions[0].pk}").status_code == 204
    assert not LiveSession.objects.filter(pk=sessions[0].pk).exists()
    again = admin_client.delete(f"/api/sessions/{sessions[0].pk}")
    assert again.status_code == 404
    assert admin_client.delete("/api/sessions/not-a-uuid").status_code == 404


@pytest.mark.django_db(transaction=True)
async def test_delete_terminates_a_live_session_through_the_channel_layer(admin_client, workspace):
    comm, reply = await open_session(workspace)
    session_id = reply["session_id"]
    response = await sync_to_async(admin_client.delete)(f"/api/sessions/{session_id}")
    assert response.status_code == 204
    assert (await comm.receive_json_from(timeout=5))["code"] == "session_terminated"
    assert (await comm.receive_output(timeout=5))["code"] == 4410
    assert not await LiveSession.objects.filter(pk=session_id).aexists()


def test_unknown_bearer_tokens_are_refused(client, sessions):
    response = client.get("/api/sessions", HTTP_AUTHORIZATION="Bearer wss_not-a-token")
    assert response.status_code == 401
    assert response.json() == {"detail": "Unknown or revoked token."}
    assert client.get("/api/sessions", HTTP_AUTHORIZATION="Bearer").status_code == 401


def test_an_api_token_of_a_permitted_user_is_let_in_and_of_a_plain_user_is_not(
    client, django_user_model, staff_user, sessions
):
    from sessions_app.tokens import token_create, token_revoke

    staff = staff_user("ops", "view_livesession", "delete_livesession")
    plain = django_user_model.objects.create_user("plain", password="pw")
    staff_token, staff_raw = token_create(user=staff, name="ops")
    _, plain_raw = token_create(user=plain, name="plain")
    assert client.get("/api/sessions", HTTP_AUTHORIZATION=f"Bearer {staff_raw}").json()["count"] == 5
    assert client.get("/api/sessions", HTTP_AUTHORIZATION=f"Bearer {plain_raw}").status_code == 403
    # Token requests carry no session cookie, so DRF asks no CSRF token of them.
    strict = Client(enforce_csrf_checks=True)
    deleted = strict.delete(f"/api/sessions/{uuid.uuid4()}", HTTP_AUTHORIZATION=f"Bearer {staff_raw}")
    assert deleted.status_code == 404
    strict.force_login(staff)
    assert strict.delete(f"/api/sessions/{uuid.uuid4()}").status_code == 403  # a cookie needs CSRF
    token_revoke(token=staff_token)
    assert client.get("/api/sessions", HTTP_AUTHORIZATION=f"Bearer {staff_raw}").status_code == 401


def test_delete_that_the_channel_layer_does_not_take_is_503_and_leaves_the_session(
    admin_client, sessions, unreachable_channel_layer
):
    LiveSession.objects.filter(pk=sessions[0].pk).update(channel_name="specific.abc!def")
    response = admin_client.delete(f"/api/sessions/{sessions[0].pk}")
    assert response.status_code == 503
    assert "channel layer" in response.json()["detail"]
    assert response["Retry-After"] == "5"
    assert LiveSession.objects.filter(pk=sessions[0].pk).exists()


def test_a_detached_session_is_listed_with_its_state_and_no_instance_and_can_be_filtered(admin_client, sessions):
    detached = sessions[0]
    LiveSession.objects.filter(pk=detached.pk).update(
        instance=None, channel_name="", detached_at=timezone.now(), resumable=True
    )
    body = admin_client.get("/api/sessions", {"state": "detached"}).json()
    assert [row["id"] for row in body["results"]] == [str(detached.pk)]
    row = body["results"][0]
    assert (row["state"], row["resumable"], row["instance"]) == ("detached", True, None)
    assert row["detached_at"]
    assert admin_client.get("/api/sessions", {"state": "attached"}).json()["count"] == 4
    assert admin_client.get("/api/sessions", {"state": "gone"}).status_code == 400


@pytest.mark.django_db(transaction=True)  # the terminate deletes on the registry writer's own connection
def test_deleting_a_detached_session_terminates_it(admin_client, sessions):
    detached = sessions[0]
    LiveSession.objects.filter(pk=detached.pk).update(instance=None, channel_name="", detached_at=timezone.now())
    assert admin_client.delete(f"/api/sessions/{detached.pk}").status_code == 204
    assert not LiveSession.objects.filter(pk=detached.pk).exists()


# --- POST /api/sessions/<id>/events ----------------------------------------------------------------


def post_event(client, session_id, body, **extra):
    return client.post(f"/api/sessions/{session_id}/events", body, content_type="application/json", **extra)


@pytest.mark.django_db(transaction=True)
async def test_post_event_is_202_with_the_seq_and_the_session_gets_it_and_it_is_audited(admin_client, workspace):
    from django.contrib.admin.models import CHANGE, LogEntry

    comm, reply = await open_session(workspace)
    session_id = reply["session_id"]
    for n in (1, 2):
        response = await sync_to_async(post_event)(admin_client, session_id, {"event": "build.finished", "data": n})
        assert (response.status_code, response.json()) == (202, {"seq": n})
    frames = [await comm.receive_json_from(timeout=5) for _ in range(2)]
    assert [(f["type"], f["seq"], f["event"], f["data"]) for f in frames] == [
        ("session_event", 1, "build.finished", 1),
        ("session_event", 2, "build.finished", 2),
    ]
    entries = [entry async for entry in LogEntry.objects.filter(object_id=session_id).order_by("pk")]
    assert [(e.action_flag, e.change_message) for e in entries] == [
        (CHANGE, "Sent event build.finished (seq 1) through the sessions API."),
        (CHANGE, "Sent event build.finished (seq 2) through the sessions API."),
    ]
    await comm.disconnect()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"data": 1}, "event"),
        ({"event": "Bad Name", "data": 1}, "event"),
        ({"event": 7, "data": 1}, "event"),
        ({"event": "ok"}, "data"),
        ([1, 2], "detail"),
    ],
)
def test_post_event_with_a_bad_or_missing_name_or_no_data_is_400(admin_client, sessions, body, field):
    response = post_event(admin_client, sessions[0].pk, body)
    assert response.status_code == 400
    assert field in response.json()
    assert LiveSession.objects.get(pk=sessions[0].pk).last_seq == 0


def test_post_event_with_null_data_is_accepted(admin_client, sessions):
    assert post_event(admin_client, sessions[0].pk, {"event": "ping", "data": None}).status_code == 202


def test_post_event_to_an_unknown_or_malformed_session_is_404(admin_client, sessions):
    for missing in (uuid.uuid4(), "not-a-uuid"):
        assert post_event(admin_client, missing, {"event": "x", "data": 1}).status_code == 404


def test_post_event_over_the_frame_limit_is_413(admin_client, sessions, settings):
    settings.WSS_MAX_MESSAGE_BYTES = 500
    response = post_event(admin_client, sessions[0].pk, {"event": "x", "data": "y" * 500})
    assert response.status_code == 413
    assert "500" in response.json()["detail"]


def test_post_event_over_the_rate_is_429_with_retry_after(admin_client, sessions, settings):
    settings.WSS_SESSION_EVENT_RATE = 2
    assert [post_event(admin_client, sessions[0].pk, {"event": "x", "data": 1}).status_code for _ in range(2)] == [
        202,
        202,
    ]
    limited = post_event(admin_client, sessions[0].pk, {"event": "x", "data": 1})
    assert limited.status_code == 429
    assert limited["Retry-After"] == "1"


def test_post_event_needs_the_send_permission_not_view_or_delete(client, django_user_model, sessions):
    from django.contrib.auth.models import Permission

    anonymous = post_event(client, sessions[0].pk, {"event": "x", "data": 1})
    assert anonymous.status_code == 401
    ops = django_user_model.objects.create_user("ops", password="pw", is_staff=True)
    ops.user_permissions.add(*Permission.objects.filter(codename__in=["view_livesession", "delete_livesession"]))
    client.force_login(ops)
    assert post_event(client, sessions[0].pk, {"event": "x", "data": 1}).status_code == 403
    sender = django_user_model.objects.create_user("sender", password="pw")
    sender.user_permissions.add(Permission.objects.get(codename="send_events_livesession"))
    client.force_login(sender)
    assert post_event(client, sessions[0].pk, {"event": "x", "data": 1}).status_code == 202
    assert Permission.objects.get(codename="send_events_livesession").name == "Can send events to live session"


@pytest.mark.production
@pytest.mark.usefixtures("production_services")
@pytest.mark.django_db(transaction=True)
def test_post_event_while_the_registry_cannot_take_it_is_503_and_nothing_is_done(admin_client, sessions):
    """Another connection holds the session's row past DATABASE_LOCK_TIMEOUT: PostgreSQL gives up the wait."""
    import psycopg

    from .servers import suite_database_url

    with psycopg.connect(suite_database_url()) as other:
        other.execute("SELECT 1 FROM sessions_app_livesession WHERE id = %s FOR UPDATE", [sessions[0].pk])
        response = post_event(admin_client, sessions[0].pk, {"event": "x", "data": 1})
    assert response.status_code == 503
    assert response["Retry-After"] == "5" and "unavailable" in response.json()["detail"]
    assert LiveSession.objects.get(pk=sessions[0].pk).last_seq == 0
