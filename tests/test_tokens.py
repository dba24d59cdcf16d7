"""API tokens: the functions, the admin, the command, and the handshake through the real ASGI app."""

import hashlib
import logging
import re
from io import StringIO

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.test import Client

from sessions_app.middleware import bearer_from_headers, bearer_from_subprotocols
from sessions_app.models import ApiToken, LiveSession
from sessions_app.protocol import SUBPROTOCOL
from sessions_app.tokens import token_authenticate, token_create, token_revoke
from wssproject.asgi import application

from .communicators import new_session

RAW_TOKEN = re.compile(r"wss_[A-Za-z0-9_-]{43}")


@pytest.fixture
def alice(db):
    return get_user_model().objects.create_user("alice", password="pw-alice-123")


# --- the functions -----------------------------------------------------------------------


def test_only_the_sha256_of_a_new_token_is_stored(alice):
    token, raw = token_create(user=alice, name="ci")
    assert RAW_TOKEN.fullmatch(raw)
    token.refresh_from_db()
    assert token.key_hash == hashlib.sha256(raw.encode()).hexdigest()
    assert raw not in {token.key_hash, token.key_prefix, token.name}
    assert raw.startswith(token.key_prefix)


def test_a_token_authenticates_its_user_and_records_its_use(alice):
    token, raw = token_create(user=alice, name="ci")
    assert token.last_used_at is None
    assert token_authenticate(raw) == alice
    token.refresh_from_db()
    assert token.last_used_at is not None


@pytest.mark.parametrize("raw", ["", "wss_unknown", "x" * 10_000, "wss_\ud800"])
def test_unknown_tokens_authenticate_nobody(alice, raw):
    token_create(user=alice, name="ci")
    assert token_authenticate(raw) is None


def test_a_revoked_token_or_an_inactive_user_authenticates_nobody(alice):
    token, raw = token_create(user=alice, name="ci")
    _other, other_raw = token_create(user=alice, name="other")
    token_revoke(token=token)
    assert token_authenticate(raw) is None
    alice.is_active = False
    alice.save()
    assert token_authenticate(other_raw) is None


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([(b"authorization", b"Bearer abc")], "abc"),
        ([(b"authorization", b"bearer  abc ")], "abc"),
        ([(b"authorization", b"Basic YTpi")], None),
        ([(b"authorization", b"Bearer ")], None),
        ([(b"cookie", b"x=1")], None),
    ],
)
def test_bearer_header_parsing(headers, expected):
    assert bearer_from_headers(headers) == expected


@pytest.mark.parametrize("header", ["Bearer {raw}", "bearer  {raw} ", "BEARER {raw}"])
def test_the_sessions_api_reads_a_bearer_header_as_the_handshake_does(alice, header):
    from django.contrib.auth.models import Permission

    alice.user_permissions.add(Permission.objects.get(codename="view_livesession"))
    _token, raw = token_create(user=alice, name="ci")
    value = header.format(raw=raw)
    assert bearer_from_headers([(b"authorization", value.encode())]) == raw
    assert Client().get("/api/sessions", HTTP_AUTHORIZATION=value).status_code == 200


def test_bearer_subprotocol_parsing():
    assert bearer_from_subprotocols([SUBPROTOCOL, "bearer.abc"]) == "abc"
    assert bearer_from_subprotocols([SUBPROTOCOL, "bearer."]) is None
    assert bearer_from_subprotocols([SUBPROTOCOL]) is None


# --- the admin and the command -----------------------------------------------------------


def test_admin_creates_a_token_and_shows_the_raw_value_exactly_once(admin_client, alice):
    response = admin_client.post("/admin/sessions_app/apitoken/add/", {"user": alice.pk, "name": "laptop"}, follow=True)
    assert response.status_code == 200
    shown = RAW_TOKEN.findall(response.content.decode())
    assert len(shown) == 1
    token = ApiToken.objects.get(name="laptop")
    assert token.user == alice
    assert token_authenticate(shown[0]) == alice
    for page in ("/admin/sessions_app/apitoken/", f"/admin/sessions_app/apitoken/{token.pk}/change/"):
        assert shown[0] not in admin_client.get(page).content.decode()


def test_admin_revoke_action_revokes(admin_client, alice):
    token, raw = token_create(user=alice, name="ci")
    admin_client.post(
        "/admin/sessions_app/apitoken/", {"action": "revoke_tokens", "_selected_action": [token.pk]}, follow=True
    )
    token.refresh_from_db()
    assert token.is_revoked
    assert token_authenticate(raw) is None


def test_create_token_command_prints_a_working_token(alice):
    out = StringIO()
    call_command("create_token", "alice", "--name", "deploy", stdout=out)
    raw = out.getvalue().strip()
    assert RAW_TOKEN.fullmatch(raw)
    assert token_authenticate(raw) == alice
    assert ApiToken.objects.get().name == "deploy"


def test_create_token_command_refuses_an_unknown_user(db):
    with pytest.raises(CommandError):
        call_command("create_token", "nobody")


# --- the handshake through the real ASGI app ----------------------------------------------


async def handshake(headers=(), subprotocols=None) -> tuple[WebsocketCommunicator, bool, object]:
    """Attempt a handshake that may be refused: the communicator, whether it connected, the subprotocol."""
    comm = WebsocketCommunicator(application, "/ws", headers=list(headers), subprotocols=subprotocols)
    connected, detail = await comm.connect()
    if not connected:
        # End it as a server would: a refused consumer left running into the loop's teardown
        # can hang it on the Redis layer (docs/decisions.md).
        await comm.disconnect()
    return comm, connected, detail


async def session_row(comm: WebsocketCommunicator, workspace) -> LiveSession:
    """Open a session on `comm`; its row, with the user it was recorded under."""
    reply = await new_session(comm, workspace)
    return await LiveSession.objects.select_related("user").aget(pk=reply["session_id"])


@pytest.fixture
def require_auth(settings):
    settings.WSS_REQUIRE_AUTH = True


@pytest.mark.django_db(transaction=True)
async def test_required_auth_refuses_an_anonymous_handshake_with_one_warning(require_auth, caplog):
    with caplog.at_level(logging.WARNING):
        _comm, connected, _ = await handshake()
    assert not connected
    refusals = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(refusals) == 1
    assert "WSS_REQUIRE_AUTH" in refusals[0].getMessage()
    assert refusals[0].exc_info is None


@pytest.mark.django_db(transaction=True)
async def test_bearer_header_token_opens_a_session_recorded_under_its_user(require_auth, alice, workspace):
    _, raw = await sync_to_async(token_create)(user=alice, name="ci")
    comm, connected, _ = await handshake(headers=[(b"authorization", f"Bearer {raw}".encode())])
    assert connected
    assert (await session_row(comm, workspace)).user == alice
    await comm.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_subprotocol_token_is_accepted_and_the_server_selects_the_protocol_not_the_token(
    require_auth, alice, workspace
):
    _, raw = await sync_to_async(token_create)(user=alice, name="browser")
    comm, connected, subprotocol = await handshake(subprotocols=[SUBPROTOCOL, f"bearer.{raw}"])
    assert connected
    assert subprotocol == SUBPROTOCOL
    assert (await session_row(comm, workspace)).user == alice
    await comm.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_logged_in_django_user_is_let_in_by_the_session_cookie(require_auth, alice, workspace):
    client = Client()
    await sync_to_async(client.force_login)(alice)
    cookie = f"sessionid={client.cookies['sessionid'].value}".encode()
    comm, connected, _ = await handshake(headers=[(b"cookie", cookie)])
    assert connected
    assert (await session_row(comm, workspace)).user == alice
    await comm.disconnect()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("auth_required", [True, False])
async def test_a_revoked_token_is_refused_even_when_auth_is_optional(settings, alice, auth_required, caplog):
    settings.WSS_REQUIRE_AUTH = auth_required
    token, raw = await sync_to_async(token_create)(user=alice, name="old")
    await sync_to_async(token_revoke)(token=token)
    with caplog.at_level(logging.WARNING):
        _, connected, _ = await handshake(headers=[(b"authorization", f"Bearer {raw}".encode())])
    assert not connected
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(messages) == 1
    assert "invalid or revoked API token" in messages[0]
    assert raw not in messages[0]


@pytest.mark.django_db(transaction=True)
async def test_without_required_auth_an_anonymous_session_has_no_user(workspace):
    comm, connected, subprotocol = await handshake()
    assert connected
    assert subprotocol is None
    assert (await session_row(comm, workspace)).user is None
    await comm.disconnect()
