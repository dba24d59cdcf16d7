"""/healthz answers without dependencies; /readyz checks the database and the channel layer."""

import asyncio

import pytest

from sessions_app import health

from .polling import wait_until

pytestmark = pytest.mark.django_db(transaction=True)


def test_healthz_answers_ok(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert "no-cache" in response["Cache-Control"] or "max-age=0" in response["Cache-Control"]


def test_readyz_is_ok_when_both_dependencies_answer(client):
    response = client.get("/readyz")
    assert response.json() == {"status": "ok", "checks": {"database": "ok", "channel_layer": "ok"}}
    assert response.status_code == 200


def test_readyz_names_a_failing_database(client, monkeypatch):
    async def broken() -> None:
        raise RuntimeError("connection refused")

    monkeypatch.setattr(health, "database_check", broken)
    response = client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["failed"] == ["database"]
    assert body["checks"] == {"database": "failed", "channel_layer": "ok"}
    assert "connection refused" in body["detail"]["database"]  # the test client is on loopback


def test_readyz_names_a_channel_layer_that_does_not_answer_in_time(client, monkeypatch, settings):
    settings.WSS_READYZ_TIMEOUT_SECONDS = 0.05

    async def hangs() -> None:
        await asyncio.Event().wait()

    monkeypatch.setattr(health, "channel_layer_check", hangs)
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["failed"] == ["channel_layer"]
    assert "timed out" in response.json()["detail"]["channel_layer"]


def test_health_endpoints_refuse_post(client):
    assert client.post("/healthz").status_code == 405
    assert client.post("/readyz").status_code == 405


@pytest.mark.production
def test_readyz_round_trips_through_redis(client, production_services):
    response = client.get("/readyz")
    assert response.status_code == 200, response.json()


def test_readyz_reports_an_unreachable_redis(client, unreachable_channel_layer):
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["failed"] == ["channel_layer"]
    assert "ConnectionError" in response.json()["detail"]["channel_layer"]  # the test client is loopback


async def test_readyz_says_how_long_the_layer_has_been_down_once_a_consumer_found_it_down(unreachable_channel_layer):
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    receive = asyncio.ensure_future(layer.receive(await layer.new_channel()))
    try:
        await wait_until(layer.unavailable, timeout=10, what="the layer marked down")
        result = await health._bounded(health.channel_layer_check, 2)
    finally:
        receive.cancel()
        await asyncio.gather(receive, return_exceptions=True)
    assert result.startswith("failed: RuntimeError: down for ")
