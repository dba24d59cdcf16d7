"""The operators' admin: read-only live sessions with a count on the index."""

import re
import uuid

import pytest
from django.utils import timezone

from sessions_app.models import LiveSession, ServerInstance

pytestmark = pytest.mark.django_db


@pytest.fixture
def sessions(instance_with_sessions) -> list[LiveSession]:
    """Three sessions on one live instance, on /srv/ws/project-0, -1 and -2."""
    return instance_with_sessions(workspaces=[f"/srv/ws/project-{n}" for n in range(3)], host="h")[1]


def instances_die() -> None:
    """Every instance stops heartbeating: terminating one of its sessions then deletes the row itself."""
    ServerInstance.objects.update(heartbeat_at=timezone.now() - timezone.timedelta(hours=1))


def test_index_shows_the_live_session_count(admin_client, sessions):
    response = admin_client.get("/admin/")
    assert response.status_code == 200
    assert "3 live sessions (0 detached)" in response.content.decode()


def test_index_and_changelist_show_detached_sessions(admin_client, sessions):
    LiveSession.objects.filter(pk=sessions[0].pk).update(
        instance=None, channel_name="", detached_at=timezone.now(), resumable=True, resume_token_hash="f" * 64
    )
    assert "3 live sessions (1 detached)" in admin_client.get("/admin/").content.decode()
    page = admin_client.get("/admin/sessions_app/livesession/").content.decode()
    assert re.search(r'live-badge-detached">detached · (29|30) s left<', page)  # the grace left (30 s)
    assert page.count('live-badge-attached">attached<') == 2
    detail = admin_client.get(f"/admin/sessions_app/livesession/{sessions[0].pk}/change/").content.decode()
    assert "f" * 64 not in detail  # the token's hash is not shown
    assert f'<div class="readonly">{sessions[0].pk}</div>' in detail  # the full id
    only_detached = admin_client.get("/admin/sessions_app/livesession/", {"state": "detached"}).content.decode()
    assert str(sessions[0].id) in only_detached
    assert str(sessions[1].id) not in only_detached
    only_attached = admin_client.get("/admin/sessions_app/livesession/", {"state": "attached"}).content.decode()
    assert str(sessions[0].id) not in only_attached
    assert str(sessions[1].id) in only_attached


def test_a_session_whose_grace_ran_out_or_whose_instance_died_is_shown_ending(admin_client, sessions):
    grace_over = timezone.now() - timezone.timedelta(minutes=5)
    LiveSession.objects.filter(pk=sessions[0].pk).update(instance=None, channel_name="", detached_at=grace_over)
    page = admin_client.get("/admin/sessions_app/livesession/").content.decode()
    assert page.count('live-badge-ending">ending<') == 1
    instances_die()
    page = admin_client.get("/admin/sessions_app/livesession/").content.decode()
    assert page.count('live-badge-ending">ending<') == 3


def test_a_row_is_short_ids_and_ages_with_the_full_values_on_hover(admin_client, sessions):
    LiveSession.objects.filter(pk=sessions[0].pk).update(created_at=timezone.now() - timezone.timedelta(minutes=3))
    page = admin_client.get("/admin/sessions_app/livesession/").content.decode()
    session = sessions[0]
    assert f'<span title="{session.id}">{str(session.id)[:8]}</span>' in page
    assert re.search(r'<span title="\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC">3 min</span>', page)
    assert '<span title="/srv/ws/project-0">/srv/ws/project-0</span>' in page


def terminate(client, ids, **fields):
    """Post the terminate action on `ids` as the list does; with post="yes", as its confirmation page does."""
    data = {"action": "terminate_sessions", "_selected_action": [str(pk) for pk in ids], **fields}
    return client.post("/admin/sessions_app/livesession/", data, follow=True)


def said(response) -> list[tuple[str, str]]:
    """The admin messages on a page: (level, text)."""
    return [(message.level_tag, str(message)) for message in response.context["messages"]]


@pytest.mark.django_db(transaction=True)
def test_terminate_action_removes_a_detached_session(admin_client, sessions):
    LiveSession.objects.filter(pk=sessions[0].pk).update(instance=None, channel_name="", detached_at=timezone.now())
    asked = terminate(admin_client, [sessions[0].pk], index="0")
    assert "Terminate 1 live session?" in asked.content.decode()
    assert LiveSession.objects.filter(pk=sessions[0].pk).exists()
    done = terminate(admin_client, [sessions[0].pk], post="yes")
    assert said(done) == [("success", f"Session {sessions[0].pk}: terminated.")]
    assert not LiveSession.objects.filter(pk=sessions[0].pk).exists()


def test_terminate_asks_first_listing_exactly_the_selected_sessions_and_ends_nothing(admin_client, sessions):
    from django.contrib.admin.models import LogEntry

    instances_die()  # a terminate that ran would delete the rows at once: that nothing ended is observable
    LiveSession.objects.filter(pk=sessions[1].pk).update(instance=None, channel_name="", detached_at=timezone.now())
    response = terminate(admin_client, [sessions[0].pk, sessions[1].pk], index="0")
    assert response.status_code == 200
    page = response.content.decode()
    assert "<h1>Terminate 2 live sessions?</h1>" in page
    hidden = re.findall(r'<input type="hidden" name="_selected_action" value="([^"]+)">', page)
    assert sorted(hidden) == sorted([str(sessions[0].pk), str(sessions[1].pk)])
    listed = re.findall(r'<td class="live-selected-id">([^<]+)</td>', page)
    assert listed == hidden  # the full ids, in the list's order
    assert str(sessions[2].pk) not in page
    assert "/srv/ws/project-0" in page and "/srv/ws/project-1" in page
    assert 'live-badge-detached">detached · ' in page
    assert '<input type="hidden" name="action" value="terminate_sessions">' in page
    assert '<input type="hidden" name="post" value="yes">' in page
    assert 'value="Yes, terminate"' in page
    assert re.search(
        r'<a href="/admin/sessions_app/livesession/[^"]*" class="button cancel-link">No, take me back</a>', page
    )
    assert LiveSession.objects.count() == 3
    assert not LogEntry.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_yes_terminates_and_says_what_happened_to_each_session(admin_client, sessions):
    detached, attached, ended = sessions
    LiveSession.objects.filter(pk=detached.pk).update(instance=None, channel_name="", detached_at=timezone.now())
    assert "Terminate 3 live sessions?" in terminate(admin_client, sessions, index="0").content.decode()
    LiveSession.objects.filter(pk=ended.pk).delete()  # it ends while the operator reads the page
    done = terminate(admin_client, sessions, post="yes")
    assert done.status_code == 200
    assert sorted(said(done)) == sorted(
        [
            ("success", f"Session {detached.pk}: terminated."),
            ("success", f"Session {attached.pk}: terminate delivered: its server closes it."),
            ("warning", f"Session {ended.pk}: not found: it had already ended."),
        ]
    )
    # The attached one's server removes its row when it reads the terminate; this test has no server.
    assert set(LiveSession.objects.values_list("pk", flat=True)) == {attached.pk}


def test_a_session_that_ended_before_the_confirmation_is_named_not_listed(admin_client, sessions):
    LiveSession.objects.filter(pk=sessions[1].pk).delete()
    page = terminate(admin_client, [sessions[0].pk, sessions[1].pk], index="0").content.decode()
    assert "Terminate 1 live session?" in page
    assert re.findall(r'<td class="live-selected-id">([^<]+)</td>', page) == [str(sessions[0].pk)]
    assert f"Ended since the list was shown, so not listed here:\n<code>{sessions[1].pk}</code>." in page
    LiveSession.objects.filter(pk=sessions[0].pk).delete()
    every_one_gone = terminate(admin_client, [sessions[0].pk, sessions[1].pk], index="0")
    assert every_one_gone.status_code == 200
    assert "Terminate" not in every_one_gone.content.decode().split("<h1>", 1)[1].split("</h1>")[0]
    assert said(every_one_gone) == [  # in the order they were ticked
        ("warning", f"Session {sessions[0].pk}: not found: it had already ended."),
        ("warning", f"Session {sessions[1].pk}: not found: it had already ended."),
    ]


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


def test_filters_speak_the_operators_words(admin_client, sessions, instance_with_sessions, django_user_model):
    other, (theirs,) = instance_with_sessions(sessions=1, host="other-host", pid=7)
    user = django_user_model.objects.create_user("alice")
    LiveSession.objects.filter(pk=theirs.pk).update(user=user, resumable=True)
    page = admin_client.get("/admin/sessions_app/livesession/").content.decode()
    for title in ("By state", "By server instance", "By user", "By resumable"):
        assert title in page
    assert "detached_at" not in page and "created_at__gte" not in page

    def listed(**query) -> set[str]:
        page = admin_client.get("/admin/sessions_app/livesession/", query).content.decode()
        return {str(s.id) for s in [*sessions, theirs] if str(s.id) in page}

    assert listed(instance__id__exact=str(other.pk)) == {str(theirs.id)}
    assert listed(user__id__exact=str(user.pk)) == {str(theirs.id)}
    assert listed(resumable__exact="1") == {str(theirs.id)}
    assert listed(q="project-1") == {str(sessions[1].id)}


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
    assert response["Content-Type"].startswith("text/css")
    assert b"font-family" in b"".join(response.streaming_content)  # the stylesheet itself


def test_anonymous_users_are_sent_to_login(client):
    response = client.get("/admin/sessions_app/livesession/")
    assert response.status_code == 302
    assert "/admin/login/" in response["Location"]


def test_unknown_session_detail_is_not_a_crash(admin_client):
    response = admin_client.get(f"/admin/sessions_app/livesession/{uuid.uuid4()}/change/")
    # Django's admin sends an unknown object back to the list, with a message saying so.
    assert response.status_code == 302
    assert response["Location"] == "/admin/"


@pytest.mark.django_db(transaction=True)
def test_terminate_action_ends_the_selected_sessions(admin_client, sessions):
    # A dead instance's rows are deleted by the terminate itself; the consumer side is in test_terminate.
    instances_die()
    chosen = [sessions[0].pk, sessions[1].pk]
    terminate(admin_client, chosen, index="0")
    assert LiveSession.objects.count() == 3
    response = terminate(admin_client, chosen, post="yes")
    assert response.status_code == 200
    assert sorted(said(response)) == sorted(("success", f"Session {pk}: terminated.") for pk in chosen)
    assert list(LiveSession.objects.values_list("pk", flat=True)) == [sessions[2].pk]


def test_staff_without_delete_permission_cannot_terminate(client, staff_user, sessions):
    instances_die()  # a terminate that ran would delete the row at once: the refusal is observable
    client.force_login(staff_user("viewer", "view_livesession"))
    page = client.get("/admin/sessions_app/livesession/").content.decode()
    assert "terminate_sessions" not in page
    for step in ({"index": "0"}, {"post": "yes"}):  # neither the list's POST nor the confirmation's
        response = terminate(client, [sessions[0].pk], **step)
        # This user has no actions at all, so the POST just shows the list again.
        assert response.status_code == 200
        page = response.content.decode()
        assert "Terminate 1 live session?" not in page and "terminated." not in page
    assert LiveSession.objects.filter(pk=sessions[0].pk).exists()
    assert LiveSession.objects.count() == 3


def test_changelist_shows_each_sessions_instance_and_whether_it_is_alive(admin_client, instance_with_sessions):
    instance_with_sessions(workspaces=["/srv"], host="alive-host", pid=11)
    instance_with_sessions(workspaces=["/srv"], host="dead-host", pid=22, age=3600)
    page = admin_client.get("/admin/sessions_app/livesession/").content.decode()
    assert re.search(r'live-dot-alive"[^>]*></span><span title="instance [^"]+">alive-host:11<', page)
    assert re.search(r'live-dot-dead"[^>]*></span><span title="instance [^"]+">dead-host:22<', page)


def test_server_instances_page_lists_each_instance_alive_or_not_with_its_session_count(
    admin_client, instance_with_sessions
):
    instance_with_sessions(sessions=2, host="busy-host", pid=11)
    instance_with_sessions(sessions=0, host="dead-host", pid=22, age=3600)
    page = admin_client.get("/admin/sessions_app/serverinstance/")
    assert page.status_code == 200
    rows = {
        host: row
        for row in page.content.decode().split("<tr")
        for host in ("busy-host", "dead-host")
        if f">{host}:" in row
    }
    assert '<td class="field-session_count">2</td>' in rows["busy-host"]
    assert 'live-badge-alive">alive<' in rows["busy-host"]
    assert '<td class="field-session_count">0</td>' in rows["dead-host"]
    assert 'live-badge-dead">dead<' in rows["dead-host"]


def test_server_instances_are_read_only(admin_client, instance_with_sessions):
    instance, _ = instance_with_sessions(sessions=1)
    assert admin_client.get("/admin/sessions_app/serverinstance/add/").status_code == 403
    url = f"/admin/sessions_app/serverinstance/{instance.pk}/change/"
    assert 'name="_save"' not in admin_client.get(url).content.decode()
    assert admin_client.post(url, {"host": "renamed", "pid": 2}).status_code == 403
    assert ServerInstance.objects.get(pk=instance.pk).host == "elsewhere"


@pytest.mark.django_db(transaction=True)
def test_terminate_action_says_so_at_error_level_when_the_channel_layer_fails(
    admin_client, sessions, unreachable_channel_layer
):
    response = terminate(admin_client, [sessions[0].pk], post="yes")
    page = response.content.decode()
    assert (
        f'<li class="error">Session {sessions[0].pk}: not terminated: the channel layer (Redis) is unavailable.' in page
    )
    assert "terminated." not in page.replace("not terminated:", "")
    assert LiveSession.objects.count() == 3


def notice(client, ids, **fields):
    data = {"action": "send_notice", "_selected_action": [str(pk) for pk in ids], **fields}
    return client.post("/admin/sessions_app/livesession/", data, follow=True)


def test_send_notice_asks_for_the_text_then_sends_it_to_each_selected_session(admin_client, sessions):
    from django.contrib.admin.models import CHANGE, LogEntry

    form = notice(admin_client, [sessions[0].pk, sessions[1].pk])
    page = form.content.decode()
    assert 'name="text"' in page and str(sessions[1].pk) in page
    assert LiveSession.objects.get(pk=sessions[0].pk).last_seq == 0  # nothing sent before the text
    done = notice(admin_client, [sessions[0].pk, sessions[1].pk], text="Maintenance at 10:00", apply="yes")
    messages = [str(m) for m in done.context["messages"]]
    assert f"Session {sessions[0].pk}: notice sent as event 1." in messages
    assert f"Session {sessions[1].pk}: notice sent as event 1." in messages
    assert LiveSession.objects.get(pk=sessions[2].pk).last_seq == 0
    entry = LogEntry.objects.get(object_id=str(sessions[0].pk))
    assert (entry.action_flag, entry.change_message) == (CHANGE, "Sent event notice (seq 1) through the admin.")


def test_send_notice_reports_each_refused_session(admin_client, sessions, settings):
    settings.WSS_SESSION_EVENT_RATE = 1
    notice(admin_client, [sessions[0].pk], text="one", apply="yes")
    done = notice(admin_client, [sessions[0].pk, sessions[1].pk], text="two", apply="yes")
    messages = [(m.level_tag, str(m)) for m in done.context["messages"]]
    assert (
        "error",
        f"Session {sessions[0].pk}: not sent: This session may be sent 1 events per second; try again in 1 s.",
    ) in messages
    assert ("success", f"Session {sessions[1].pk}: notice sent as event 1.") in messages


def test_send_notice_needs_the_send_permission(client, django_user_model, sessions):
    from django.contrib.auth.models import Permission

    viewer = django_user_model.objects.create_user("viewer", password="pw", is_staff=True)
    viewer.user_permissions.add(*Permission.objects.filter(codename__in=["view_livesession", "delete_livesession"]))
    client.force_login(viewer)
    assert "send_notice" not in client.get("/admin/sessions_app/livesession/").content.decode()
    notice(client, [sessions[0].pk], text="no", apply="yes")
    assert LiveSession.objects.get(pk=sessions[0].pk).last_seq == 0
    viewer.user_permissions.add(Permission.objects.get(codename="send_events_livesession"))
    assert "send_notice" in client.get("/admin/sessions_app/livesession/").content.decode()
    notice(client, [sessions[0].pk], text="yes", apply="yes")
    assert LiveSession.objects.get(pk=sessions[0].pk).last_seq == 1


@pytest.mark.django_db(transaction=True)
async def test_a_notice_from_the_admin_reaches_the_sessions_client(admin_client, workspace):
    from asgiref.sync import sync_to_async

    from .communicators import open_session

    comm, reply = await open_session(workspace, ok=True)
    await sync_to_async(notice)(admin_client, [reply["session_id"]], text="Restart at 10:00", apply="yes")
    frame = await comm.receive_json_from(timeout=5)
    assert (frame["type"], frame["seq"], frame["event"], frame["data"]) == (
        "session_event",
        1,
        "notice",
        {"text": "Restart at 10:00"},
    )
    await comm.disconnect()


def test_index_shows_each_instance_with_its_sessions_and_the_dying_and_reaped_in_red(
    admin_client, instance_with_sessions
):
    from sessions_app.activity import epoch_minute
    from sessions_app.models import ActivityMinute

    instance_with_sessions(sessions=2, host="busy-host", pid=11)
    instance_with_sessions(sessions=1, host="dying-host", pid=22, age=12)  # two heartbeats missed
    instance_with_sessions(sessions=0, host="dead-host", pid=33, age=3600)
    minute = timezone.datetime.fromtimestamp(epoch_minute() * 60, timezone.get_current_timezone())
    ActivityMinute.objects.create(
        instance_id=uuid.uuid4(), host="crashed-host", pid=44, minute=minute, opened=3, ended=1
    )
    ActivityMinute.objects.create(instance_id=uuid.uuid4(), host="stopped-host", pid=55, minute=minute, stopped=True)
    page = admin_client.get("/admin/").content.decode()
    rows = {row.split(">", 1)[0]: row for row in page.split('<tr class="live-instance-')[1:]}
    health = {host: state for state, row in rows.items() for host in re.findall(r">([a-z-]+-host):\d+<", row)}
    assert health == {
        "busy-host": 'alive"',
        "dying-host": 'dying"',
        "dead-host": 'dead"',
        "crashed-host": 'reaped"',
        "stopped-host": 'stopped"',
    }
    assert '<td class="live-count">2</td>' in rows['alive"']
    assert "Last hour: 3 opened, 1 ended" in page
    assert "<svg" in page and "cdn" not in page.lower()


def test_index_shows_no_glance_to_staff_who_may_not_view_sessions(client, django_user_model):
    user = django_user_model.objects.create_user("staff", password="pw", is_staff=True)
    client.force_login(user)
    page = client.get("/admin/").content.decode()
    assert "live-glance" not in page and "admin_live.js" not in page
