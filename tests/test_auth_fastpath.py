"""Handshakes with a session cookie get their user; without one they skip the auth stack."""

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
from django.contrib.auth.models import AnonymousUser
from django.contrib.sessions.backends.db import SessionStore

from sessions_app.auth_fastpath import SessionCookieAuthMiddleware
from sessions_app.models import LiveSession

from .communicators import open_session

pytestmark = pytest.mark.django_db(transaction=True)


@sync_to_async
def logged_in_session_key(django_user_model) -> tuple[int, str]:
    user = django_user_model.objects.create_user("operator", password="pw")
    session = SessionStore()
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = settings.AUTHENTICATION_BACKENDS[0]
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.save()
    return user.pk, session.session_key


async def open_session_row(workspace, headers: list) -> LiveSession:
    comm, reply = await open_session(workspace, headers=headers)
    row = await LiveSession.objects.aget(pk=reply["session_id"])
    await comm.disconnect()
    return row


async def scope_seen(headers: list) -> dict:
    """The scope that SessionCookieAuthMiddleware hands to the application inside it."""
    seen: dict = {}

    async def inner(scope, receive, send) -> None:
        seen.update(scope)

    await SessionCookieAuthMiddleware(inner)({"type": "websocket", "path": "/ws", "headers": headers}, None, None)
    return seen


async def test_a_logged_in_session_cookie_records_the_user_on_the_session(workspace, django_user_model):
    user_id, key = await logged_in_session_key(django_user_model)
    cookie = f"other=1; {settings.SESSION_COOKIE_NAME}={key}".encode()
    row = await open_session_row(workspace, headers=[(b"cookie", cookie)])
    assert row.user_id == user_id


async def test_without_a_session_cookie_the_session_is_anonymous(workspace):
    row = await open_session_row(workspace, headers=[(b"cookie", b"theme=dark")])
    assert row.user_id is None


async def test_an_unknown_session_cookie_is_anonymous(workspace):
    cookie = f"{settings.SESSION_COOKIE_NAME}=nosuchsession".encode()
    row = await open_session_row(workspace, headers=[(b"cookie", cookie)])
    assert row.user_id is None


async def test_a_handshake_without_the_session_cookie_skips_the_session_and_auth_middlewares():
    # AuthMiddlewareStack puts a `session` in every scope and a lazy user to resolve on a
    # database thread; the direct path has neither: a plain AnonymousUser and the cookies.
    scope = await scope_seen([(b"cookie", b"theme=dark")])
    assert "session" not in scope
    assert type(scope["user"]) is AnonymousUser
    assert scope["cookies"] == {"theme": "dark"}
    assert "session" not in await scope_seen([])


async def test_a_handshake_with_the_session_cookie_takes_the_full_stack():
    scope = await scope_seen([(b"cookie", f"{settings.SESSION_COOKIE_NAME}=nosuchsession".encode())])
    assert "session" in scope
    assert type(scope["user"]) is not AnonymousUser  # Channels' lazy user, resolved by the stack
