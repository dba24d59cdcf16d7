"""/metrics: Prometheus text, guarded by address or token; the consumer records into it."""

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from sessions_app import heartbeat, metrics, terminate
from sessions_app.addresses import address_in
from wssproject.asgi import application

from .communicators import connect, detached_session, open_session, resume
from .polling import wait_until


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class Delta:
    """Reads a sample before and after: metrics are per process and shared by all tests."""

    def __init__(self, name: str, **labels: str) -> None:
        self.name, self.labels, self.before = name, labels, sample(name, **labels)

    @property
    def value(self) -> float:
        return sample(self.name, **self.labels) - self.before


@pytest.mark.django_db
def test_metrics_are_prometheus_text_with_every_instrument(client):
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    families = {family.name for family in text_string_to_metric_families(response.content.decode())}
    assert {
        "wss_live_sessions",
        "wss_sessions_created",
        "wss_sessions_ended",
        "wss_protocol_errors",
        "wss_handshake_refusals",
        "wss_new_session_seconds",
        "wss_channel_layer_up",
        "wss_channel_layer_outages",
        "wss_channel_layer_failures",
        "wss_admin_live_pages",
        "wss_admin_live_frames",
        "wss_registry_nudges",
    } <= families
    for reason in metrics.END_REASONS:
        assert f'wss_sessions_ended_total{{reason="{reason}"}}' in response.content.decode()


@pytest.mark.django_db
def test_metrics_are_refused_to_other_addresses(client):
    response = client.get("/metrics", REMOTE_ADDR="10.1.2.3")
    assert response.status_code == 403
    assert "WSS_METRICS_ALLOWED_IPS" in response.json()["detail"]


@pytest.mark.django_db
def test_metrics_token_admits_any_address_and_a_wrong_token_gets_401(client, settings):
    settings.WSS_METRICS_TOKEN = "s3cret"
    ok = client.get("/metrics", REMOTE_ADDR="10.1.2.3", HTTP_AUTHORIZATION="Bearer s3cret")
    assert ok.status_code == 200
    wrong = client.get("/metrics", REMOTE_ADDR="10.1.2.3", HTTP_AUTHORIZATION="Bearer nope")
    assert wrong.status_code == 401
    assert wrong["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    "address, allowed, expected",
    [
        ("127.0.0.1", ["127.0.0.1"], True),
        ("10.0.3.4", ["10.0.0.0/16"], True),
        ("10.1.3.4", ["10.0.0.0/16"], False),
        ("::1", ["::1"], True),
        ("[::1]", ["::1"], True),
        ("127.0.0.1", [], False),
        ("127.0.0.1", ["not-an-address", "127.0.0.1"], True),
        ("", ["127.0.0.1"], False),
    ],
)
def test_address_in_takes_addresses_and_networks(address, allowed, expected):
    assert address_in(address, allowed) is expected


@pytest.mark.django_db(transaction=True)
async def test_a_session_counts_created_live_and_ended_by_client_close(workspace):
    created, live = Delta("wss_sessions_created_total"), Delta("wss_live_sessions")
    ended, latency = Delta("wss_sessions_ended_total", reason="client_close"), Delta("wss_new_session_seconds_count")
    comm, reply = await open_session(workspace)
    assert reply["type"] == "new_session"
    assert (created.value, live.value, latency.value) == (1, 1, 1)
    await comm.disconnect(code=1000)
    assert (live.value, ended.value) == (0, 1)


@pytest.mark.django_db(transaction=True)
async def test_abnormal_close_counts_as_drop(workspace):
    dropped = Delta("wss_sessions_ended_total", reason="drop")
    comm, _ = await open_session(workspace)
    await comm.disconnect(code=1006)
    assert dropped.value == 1


@pytest.mark.django_db(transaction=True)
async def test_a_fatal_error_counts_the_code_and_ends_the_session_as_protocol_error(workspace):
    errors = Delta("wss_protocol_errors_total", code="invalid_json")
    ended = Delta("wss_sessions_ended_total", reason="protocol_error")
    comm, _ = await open_session(workspace)
    await comm.send_to(text_data="{nope")
    assert (await comm.receive_json_from(timeout=5))["code"] == "invalid_json"
    assert (await comm.receive_output(timeout=5))["code"] == 4400
    await comm.disconnect(code=4400)  # the client echoes the close
    assert (errors.value, ended.value) == (1, 1)


@pytest.mark.django_db(transaction=True)
async def test_terminate_counts_as_terminated_once(workspace):
    terminated = Delta("wss_sessions_ended_total", reason="terminated")
    live = Delta("wss_live_sessions")
    comm, reply = await open_session(workspace)
    result = await terminate.session_terminate_request(session_id=reply["session_id"])
    assert result == terminate.TerminateResult.DELIVERED
    assert (await comm.receive_json_from(timeout=5))["code"] == "session_terminated"
    await comm.disconnect(code=4410)
    assert (terminated.value, live.value) == (1, 0)


async def refuse_for_origin(settings) -> None:
    settings.DEBUG = False
    comm = WebsocketCommunicator(application, "/ws", headers=[(b"origin", b"http://evil.example")])
    assert not (await comm.connect())[0]
    await comm.disconnect()  # end the refused consumer as a server would


async def refuse_for_auth(settings) -> None:
    settings.WSS_REQUIRE_AUTH = True
    comm = WebsocketCommunicator(application, "/ws")
    assert not (await comm.connect())[0]
    await comm.disconnect()  # end the refused consumer as a server would


# How to make the server refuse a handshake for each reason: a reason exported with no way
# to provoke it, or provoked under another label, fails below.
REFUSALS = {"origin": refuse_for_origin, "auth": refuse_for_auth}


def exported_refusal_reasons(client) -> set[str]:
    body = client.get("/metrics").content.decode()
    return {
        sample.labels["reason"]
        for family in text_string_to_metric_families(body)
        if family.name == "wss_handshake_refusals"
        for sample in family.samples
    }


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("reason", sorted(REFUSALS))
async def test_a_refused_handshake_is_counted_under_its_reason(reason, settings):
    counts = {name: Delta("wss_handshake_refusals_total", reason=name) for name in REFUSALS}
    await REFUSALS[reason](settings)
    assert {name: delta.value for name, delta in counts.items()} == {name: int(name == reason) for name in REFUSALS}


@pytest.mark.django_db(transaction=True)
async def test_every_refusal_reason_exported_is_one_the_server_can_be_made_to_emit(client, settings):
    for refuse in REFUSALS.values():
        await refuse(settings)
    assert await sync_to_async(exported_refusal_reasons)(client) == set(REFUSALS)


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("fresh_process")
async def test_the_reaper_counts_what_it_reaps_without_touching_the_live_gauge(settings, instance_with_sessions):
    settings.WSS_HEARTBEAT_SECONDS = 0.05
    settings.WSS_INSTANCE_TIMEOUT_SECONDS = 0.5
    reaped, live = Delta("wss_sessions_ended_total", reason="reaped"), Delta("wss_live_sessions")
    await sync_to_async(instance_with_sessions)(sessions=3, age=60)
    await heartbeat.start()
    await wait_until(lambda: reaped.value >= 3, 10, what="the reaper's count")
    assert (reaped.value, live.value) == (3, 0)


def test_a_malformed_allowed_ip_is_a_system_check_error(settings):
    from sessions_app.checks import check_metrics_allowed_ips

    settings.WSS_METRICS_ALLOWED_IPS = ["10.0.0.0/8", "localhost"]
    (error,) = check_metrics_allowed_ips(None)
    assert error.id == "wss.E010"
    assert "'localhost'" in error.msg


def scrape(server) -> dict[str, float]:
    from urllib.request import urlopen

    with urlopen(f"{server.http_url}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        sample.name + str(sorted(sample.labels.items()) or ""): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@pytest.mark.live
async def test_a_real_daphne_serves_its_own_counts_to_loopback(daphne_server, workspace):
    from sessions_app.client import connect

    assert scrape(daphne_server)["wss_live_sessions"] == 0
    async with connect(daphne_server.url) as client:
        await client.new_session(str(workspace))
        during = scrape(daphne_server)
    assert during["wss_live_sessions"] == 1
    assert during["wss_sessions_created_total"] == 1
    assert during["wss_new_session_seconds_count"] == 1


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("fresh_process")
async def test_detach_resume_take_over_and_expiry_are_counted(workspace, settings):
    from django.utils import timezone

    from sessions_app.models import LiveSession

    detached, resumed = Delta("wss_sessions_detached_total", reason="drop"), Delta("wss_sessions_resumed_total")
    taken_over, expired = Delta("wss_sessions_taken_over_total"), Delta("wss_sessions_ended_total", reason="expired")
    live = Delta("wss_live_sessions")
    created = await detached_session(workspace)
    assert (detached.value, live.value) == (1, 0)

    first = await connect()
    token = (await resume(first, created["session_id"], created["resume_token"]))["resume_token"]
    second = await connect()
    await resume(second, created["session_id"], token)
    assert (await first.receive_json_from(timeout=5))["code"] == "session_taken_over"
    await first.disconnect(code=4409)
    assert (resumed.value, taken_over.value, live.value) == (2, 1, 1)

    await second.disconnect(code=1001)
    await LiveSession.objects.aupdate(detached_at=timezone.now() - timezone.timedelta(hours=1))
    settings.WSS_HEARTBEAT_SECONDS = 0.05
    await heartbeat.start()  # the heartbeat's expiry removes it and counts it
    await wait_until(lambda: expired.value, 10, what="the expiry's count")
    assert (expired.value, live.value) == (1, 0)
    assert not await LiveSession.objects.aexists()
