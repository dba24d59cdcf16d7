"""One access model: the admin and the sessions API grant the same things for the same permissions.

Refusals are made observable: the session rows belong to a dead instance, so a terminate
that went through would delete them; after a refusal they must still be there.
"""

import pytest

from sessions_app.models import ApiToken, LiveSession
from sessions_app.tokens import token_create

# Transactional: a terminate's delete runs on the registry writer's own connection.
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def dead_sessions(db, instance_with_sessions) -> list[LiveSession]:
    """Two sessions of a dead instance: a permitted terminate deletes their rows at once."""
    return instance_with_sessions(workspaces=["/srv/ws/0", "/srv/ws/1"], age=3600)[1]


def test_api_refuses_staff_without_the_view_permission_and_terminates_nothing(client, staff_user, dead_sessions):
    client.force_login(staff_user("staff"))
    assert client.get("/api/sessions").status_code == 403
    assert client.get(f"/api/sessions/{dead_sessions[0].pk}").status_code == 403
    assert client.get("/api/sessions", {"instance": "not-a-uuid"}).status_code == 403  # nothing parsed first
    assert client.delete(f"/api/sessions/{dead_sessions[0].pk}").status_code == 403
    assert LiveSession.objects.count() == 2


def test_api_view_permission_reads_but_does_not_terminate(client, staff_user, dead_sessions):
    client.force_login(staff_user("viewer", "view_livesession"))
    assert client.get("/api/sessions").json()["count"] == 2
    assert client.delete(f"/api/sessions/{dead_sessions[0].pk}").status_code == 403
    assert LiveSession.objects.count() == 2


def test_api_delete_without_view_is_still_refused_to_read(client, staff_user, dead_sessions):
    client.force_login(staff_user("deleter", "delete_livesession"))
    assert client.get("/api/sessions").status_code == 403
    assert client.delete(f"/api/sessions/{dead_sessions[0].pk}").status_code == 204
    assert LiveSession.objects.count() == 1


def test_api_token_carries_its_users_permissions_only(client, staff_user, dead_sessions):
    _, bare = token_create(user=staff_user("bare"), name="t")
    _, viewer = token_create(user=staff_user("viewer", "view_livesession"), name="t")
    assert client.get("/api/sessions", HTTP_AUTHORIZATION=f"Bearer {bare}").status_code == 403
    assert client.get("/api/sessions", HTTP_AUTHORIZATION=f"Bearer {viewer}").status_code == 200
    refused = client.delete(f"/api/sessions/{dead_sessions[0].pk}", HTTP_AUTHORIZATION=f"Bearer {viewer}")
    assert refused.status_code == 403
    assert LiveSession.objects.count() == 2


def test_admin_refuses_staff_without_permissions_and_terminates_nothing(client, staff_user, dead_sessions):
    action = {"action": "terminate_sessions", "_selected_action": [str(s.pk) for s in dead_sessions], "post": "yes"}
    client.force_login(staff_user("staff"))
    assert client.get("/admin/sessions_app/livesession/").status_code == 403
    assert client.post("/admin/sessions_app/livesession/", action).status_code == 403
    client.force_login(staff_user("viewer", "view_livesession"))
    assert "terminate_sessions" not in client.get("/admin/sessions_app/livesession/").content.decode()
    client.post("/admin/sessions_app/livesession/", action)
    assert LiveSession.objects.count() == 2
    client.force_login(staff_user("operator", "view_livesession", "delete_livesession"))
    client.post("/admin/sessions_app/livesession/", action)
    assert LiveSession.objects.count() == 0


def test_only_superusers_mint_tokens_for_other_users(client, staff_user, admin_user):
    minter = staff_user("minter", "add_apitoken", "view_apitoken", "change_apitoken")
    client.force_login(minter)
    form = client.get("/admin/sessions_app/apitoken/add/").content.decode()
    assert f'value="{minter.pk}"' in form
    assert f'value="{admin_user.pk}"' not in form
    refused = client.post("/admin/sessions_app/apitoken/add/", {"user": admin_user.pk, "name": "as admin"})
    assert refused.status_code == 200  # the form again, with an error: not a valid choice
    assert not ApiToken.objects.filter(user=admin_user).exists()
    client.post("/admin/sessions_app/apitoken/add/", {"user": minter.pk, "name": "mine"})
    assert ApiToken.objects.filter(user=minter, name="mine").exists()
    # Nor may they see or revoke someone else's.
    others, _ = token_create(user=admin_user, name="admin's")
    assert "admin&#x27;s" not in client.get("/admin/sessions_app/apitoken/").content.decode()
    client.post("/admin/sessions_app/apitoken/", {"action": "revoke_tokens", "_selected_action": [others.pk]})
    others.refresh_from_db()
    assert not others.is_revoked
    client.force_login(admin_user)
    client.post("/admin/sessions_app/apitoken/add/", {"user": minter.pk, "name": "from the superuser"})
    assert ApiToken.objects.filter(user=minter, name="from the superuser").exists()


def test_the_send_events_permission_grants_the_same_in_the_admin_and_the_api(client, staff_user, dead_sessions):
    """Without it, neither the API's POST nor the admin's notice action sends; with it, both do."""
    target = dead_sessions[0].pk
    body = {"event": "notice", "data": {"text": "hi"}}
    action = {"action": "send_notice", "_selected_action": [str(target)], "text": "hi", "apply": "yes"}
    client.force_login(staff_user("viewer", "view_livesession", "delete_livesession"))
    assert client.post(f"/api/sessions/{target}/events", body, content_type="application/json").status_code == 403
    client.post("/admin/sessions_app/livesession/", action)
    assert LiveSession.objects.get(pk=target).last_seq == 0
    client.force_login(staff_user("sender", "view_livesession", "send_events_livesession"))
    assert client.post(f"/api/sessions/{target}/events", body, content_type="application/json").status_code == 202
    client.post("/admin/sessions_app/livesession/", action)
    assert LiveSession.objects.get(pk=target).last_seq == 2
