"""/healthz answers without dependencies; /readyz checks the database and the channel layer."""

import asyncio
import time

import pytest

from sessions_app import health

from .polling import SLACK, wait_until
from .servers import database_url_via, redis_url_via

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


# A rolling deploy waits on /readyz (docs/operations.md, step 4): a real server is failed by
# real outages, its database cut and its Redis stalled behind a TcpProxy, and recovers.
READYZ_TIMEOUT = 2  # WSS_READYZ_TIMEOUT_SECONDS' default


async def readyz(server) -> tuple[int, dict, float]:
    """GET /readyz from loopback (which sees the detail): the status, the body and the seconds it took."""
    started = time.monotonic()
    status, body = await asyncio.to_thread(server.get, "/readyz")
    return status, body, time.monotonic() - started


async def ready_again(server) -> None:
    async def ready() -> bool:
        return (await readyz(server))[0] == 200

    await wait_until(ready, READYZ_TIMEOUT * 2 + SLACK, what="/readyz 200 again")


@pytest.mark.production
@pytest.mark.live
async def test_readyz_names_the_database_during_a_real_outage_and_recovers(database_proxy, server_factory):
    server = server_factory(env={"DATABASE_URL": database_url_via(database_proxy)})
    assert (await readyz(server))[0] == 200
    database_proxy.cut()
    status, body, took = await readyz(server)
    assert (status, body["failed"], body["checks"]) == (
        503,
        ["database"],
        {"database": "failed", "channel_layer": "ok"},
    )
    assert f"port {database_proxy.port} failed" in body["detail"]["database"]
    assert took < READYZ_TIMEOUT + SLACK
    database_proxy.restore()
    await ready_again(server)


@pytest.mark.production
@pytest.mark.live
async def test_readyz_names_a_stalled_redis_after_its_timeout_and_recovers(redis_proxy, server_factory, settings):
    server = server_factory(env={"REDIS_URL": redis_url_via(redis_proxy, settings.REDIS_URL)})
    assert (await readyz(server))[0] == 200
    redis_proxy.stall()  # Redis accepts and answers nothing
    status, body, took = await readyz(server)
    assert (status, body["failed"], body["checks"]) == (
        503,
        ["channel_layer"],
        {"database": "ok", "channel_layer": "failed"},
    )
    assert body["detail"]["channel_layer"] == f"timed out after {READYZ_TIMEOUT} s"
    assert READYZ_TIMEOUT <= took < READYZ_TIMEOUT + SLACK
    redis_proxy.restore()
    await ready_again(server)


def test_health_endpoints_refuse_post(client):
    assert client.post("/healthz").status_code == 405
    assert client.post("/readyz").status_code == 405


@pytest.mark.production
def test_readyz_round_trips_through_redis(client, production_services):
    response = client.get("/readyz")
    assert response.status_code == 200, response.json()
    assert response.json() == {"status": "ok", "checks": {"database": "ok", "channel_layer": "ok"}}


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
