"""Nothing leaked: /readyz tells the public only which check failed; error pages mask credentials."""

import asyncio
import logging
import sys
import uuid

import pytest
from django.test import RequestFactory
from django.views.debug import ExceptionReporter

from .servers import database_url_via

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.mark.production
@pytest.mark.live
async def test_readyz_tells_a_remote_caller_only_which_check_failed(database_proxy, server_factory):
    # A real outage: the database's exception names its host and port (here the proxy's).
    token = "scrape-secret"
    server = server_factory(env={"DATABASE_URL": database_url_via(database_proxy), "WSS_METRICS_TOKEN": token})
    database_proxy.cut()
    detail = f"port {database_proxy.port}"
    status, body = await asyncio.to_thread(server.get, "/readyz", source="127.0.0.2")  # not on the allowlist
    assert (status, body) == (
        503,
        {"status": "unavailable", "checks": {"database": "failed", "channel_layer": "ok"}, "failed": ["database"]},
    )
    # The callers /metrics serves get the detail: loopback, and the token from anywhere.
    _, on_loopback = await asyncio.to_thread(server.get, "/readyz")
    assert detail in on_loopback["detail"]["database"]
    _, with_token = await asyncio.to_thread(
        server.get, "/readyz", source="127.0.0.2", headers={"Authorization": f"Bearer {token}"}
    )
    assert detail in with_token["detail"]["database"]
    assert detail in server.log()  # a warning: written before the answer


@pytest.mark.production
def test_readyz_hides_an_unreachable_redis_address_from_remote_callers(client, production_services, settings):
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": ["redis://:hunter2@127.0.0.1:1/0"]},
        }
    }
    from channels.layers import channel_layers

    channel_layers.backends.pop("default", None)
    try:
        response = client.get("/readyz", REMOTE_ADDR="203.0.113.7")
    finally:
        channel_layers.backends.pop("default", None)
    assert response.status_code == 503
    assert response.json()["checks"]["channel_layer"] == "failed"
    assert "127.0.0.1" not in response.content.decode()


# Made at run time: the debug page shows source lines around each frame, so a literal would show.
SECRETS = [f"pw{n}-{uuid.uuid4().hex}" for n in range(8)]


def debug_page() -> str:
    """Django's technical 500 page for an exception raised under the current settings."""
    request = RequestFactory().get("/boom", HTTP_AUTHORIZATION=f"Bearer wss_{SECRETS[6]}")
    try:
        fail_holding_a_dsn()
    except RuntimeError:
        return ExceptionReporter(request, *sys.exc_info()).get_traceback_html()


def fail_holding_a_dsn() -> None:
    """Raise with a connection URL in a local variable, which the page lists."""
    dsn = f"postgres://wss:{SECRETS[7]}@db.internal/wss"
    raise RuntimeError(f"boom after {len(dsn)}")


@pytest.fixture
def credentials_in_settings(settings) -> None:
    """Settings holding a secret each, as a production deployment's do."""
    settings.DATABASE_URL = f"postgres://wss:{SECRETS[0]}@db.internal:5432/wss"
    settings.REDIS_URL = f"redis://:{SECRETS[1]}@redis.internal:6379/0"
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [{"address": f"redis://:{SECRETS[2]}@redis.internal:6379/0"}]},
        }
    }
    settings.WSS_METRICS_TOKEN = SECRETS[3]
    settings.SENTRY_DSN = f"https://{SECRETS[4]}@sentry.example.com/1"
    settings.SOME_BACKUP_LOCATION = f"s3://user:{SECRETS[5]}@bucket/path"


def test_the_debug_page_masks_connection_urls_and_tokens(settings, credentials_in_settings):
    settings.DEBUG = True
    page = debug_page()
    assert "RuntimeError" in page  # it is the debug page
    assert "DATABASE_URL" in page  # with its settings listed
    for number, secret in enumerate(SECRETS):
        assert secret not in page, number


def test_an_emailed_error_report_masks_connection_urls_and_tokens(settings, credentials_in_settings, mailoutbox):
    # What Django does with an unhandled exception in production: django.request logs it and
    # the mail_admins handler (DEBUG off, ADMINS set) sends the report, settings and all.
    settings.DEBUG = False
    settings.ADMINS = [("ops", "ops@example.com")]
    request = RequestFactory().get("/boom", HTTP_AUTHORIZATION=f"Bearer wss_{SECRETS[6]}")
    try:
        fail_holding_a_dsn()
    except RuntimeError:
        logging.getLogger("django.request").error(
            "Internal Server Error: /boom", exc_info=True, extra={"status_code": 500, "request": request}
        )
    [mail] = mailoutbox
    report = mail.body + "".join(str(content) for content, _ in mail.alternatives)
    assert "RuntimeError" in report and "DATABASE_URL" in report  # the report, with its settings
    for number, secret in enumerate(SECRETS):
        assert secret not in report, number
