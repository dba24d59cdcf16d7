"""Hostile clients against a real daphne: 403s, invalid UTF-8, the size cut-off, dead peers,
floods, a mixed load, and the registry going away under a live server."""

import asyncio
import contextlib
import json
import re
import statistics
import time
from pathlib import Path

import pytest
import websockets
from django.conf import settings
from django.contrib.auth import get_user_model

from sessions_app.models import LiveSession
from sessions_app.protocol import SUBPROTOCOL
from sessions_app.tokens import token_create

from .communicators import close_code_after, new_session_frame, ws_open_session
from .polling import wait_until
from .servers import database_url_via

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True)]


async def refused_status(url: str, **kwargs) -> int:
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with websockets.connect(url, open_timeout=10, **kwargs):
            pass
    return refused.value.response.status_code


# --- access: origins and authentication -------------------------------------------------------


@pytest.fixture
def origin_server(server_factory):
    return server_factory(env={"WSS_ALLOWED_ORIGINS": "https://app.example.com"})


async def test_a_disallowed_browser_origin_gets_403_and_is_logged_with_the_origin(origin_server):
    assert await refused_status(origin_server.url, origin="https://evil.example") == 403
    await wait_until(lambda: "reason=origin" in origin_server.log(), 5, what="the refusal's log line")
    log = origin_server.log()
    refusals = [line for line in log.splitlines() if "refused" in line and "reason=origin" in line]
    assert len(refusals) == 1
    assert "https://evil.example" in refusals[0]
    origin_server.assert_no_traceback()


@pytest.mark.parametrize("origin", [None, "https://app.example.com", "http://127.0.0.1:{port}", "http://localhost"])
async def test_listed_origins_allowed_hosts_and_no_origin_are_let_in(origin_server, workspace, origin):
    kwargs = {} if origin is None else {"origin": origin.format(port=origin_server.port)}
    async with websockets.connect(origin_server.url, **kwargs) as ws:
        assert await ws_open_session(ws, workspace)


@pytest.fixture
def locked_server(server_factory):
    """WSS_REQUIRE_ORIGIN and WSS_REQUIRE_AUTH both on."""
    return server_factory(env={"WSS_REQUIRE_ORIGIN": "1", "WSS_REQUIRE_AUTH": "1"})


@pytest.fixture
def alice_token(transactional_db) -> tuple:
    alice = get_user_model().objects.create_user("alice")
    return alice, token_create(user=alice, name="live")[1]


ORIGIN = "http://127.0.0.1"


async def test_required_origin_refuses_a_client_without_one_with_403(locked_server):
    assert await refused_status(locked_server.url) == 403
    await wait_until(lambda: "no Origin header and WSS_REQUIRE_ORIGIN is on" in locked_server.log(), 5)


async def test_required_auth_refuses_an_anonymous_handshake_with_403(locked_server):
    assert await refused_status(locked_server.url, origin=ORIGIN) == 403
    await wait_until(lambda: "WSS_REQUIRE_AUTH is on" in locked_server.log(), 5)


async def test_required_auth_refuses_a_bad_token_with_403_without_logging_it(locked_server, alice_token):
    bad = "wss_" + "A" * 43
    assert (
        await refused_status(locked_server.url, origin=ORIGIN, additional_headers={"Authorization": f"Bearer {bad}"})
        == 403
    )
    await wait_until(lambda: "invalid or revoked API token" in locked_server.log(), 5)
    log = locked_server.log()
    assert bad not in log


async def test_a_bearer_header_token_opens_a_session_under_its_user(locked_server, alice_token, workspace):
    alice, raw = alice_token
    async with websockets.connect(
        locked_server.url, origin=ORIGIN, additional_headers={"Authorization": f"Bearer {raw}"}
    ) as ws:
        session_id = await ws_open_session(ws, workspace)
        assert (await LiveSession.objects.aget(pk=session_id)).user_id == alice.pk


async def test_a_browser_style_subprotocol_token_is_accepted_and_the_protocol_selected(
    locked_server, alice_token, workspace
):
    alice, raw = alice_token
    async with websockets.connect(locked_server.url, origin=ORIGIN, subprotocols=[SUBPROTOCOL, f"bearer.{raw}"]) as ws:
        assert ws.subprotocol == SUBPROTOCOL
        session_id = await ws_open_session(ws, workspace)
        assert (await LiveSession.objects.aget(pk=session_id)).user_id == alice.pk
    # Lines are written in order by the log writer: once the session's end is there, so is
    # anything the handshake logged.
    await wait_until(lambda: f"session_ended session_id={session_id}" in locked_server.log(), 10)
    assert raw not in locked_server.log()


# --- frames only a real server sees ------------------------------------------------------------


async def test_invalid_utf8_drops_only_that_connection_and_others_are_untouched(daphne_server, workspace):
    async with websockets.connect(daphne_server.url) as good:
        session_id = await ws_open_session(good, workspace)
        async with websockets.connect(daphne_server.url) as bad:
            await bad.send(b"\xff\xfe{", text=True)  # a text frame that is not UTF-8
            # autobahn fails the connection "by drop" (no close frame), so the client sees 1006.
            assert await close_code_after(bad) == 1006
        assert await LiveSession.objects.acount() == 1
        await good.send(new_session_frame(workspace))
        assert json.loads(await good.recv())["code"] == "session_exists"
        assert await LiveSession.objects.filter(pk=session_id).aexists()
    daphne_server.assert_no_traceback()


async def test_a_frame_over_daphnes_1_mib_cut_off_drops_only_that_connection(daphne_server, workspace):
    async with websockets.connect(daphne_server.url) as good:
        session_id = await ws_open_session(good, workspace)
        async with websockets.connect(daphne_server.url, max_size=None) as bad:
            with contextlib.suppress(websockets.ConnectionClosedError):  # the cut can come mid-send
                await bad.send("x" * (1024 * 1024 + 1))
            assert await close_code_after(bad) == 1006  # autobahn's cut: no error frame, no close frame
        assert await LiveSession.objects.acount() == 1
        await good.send(new_session_frame(workspace))
        assert json.loads(await good.recv())["code"] == "session_exists"
        assert await LiveSession.objects.filter(pk=session_id).aexists()


# --- dead peers ----------------------------------------------------------------------------------

PING_INTERVAL, PING_TIMEOUT = 1, 1
DAPHNE_TIMEOUT_CHECK_PERIOD = 2  # daphne looks at its sockets' ping state every 2 s
MARGIN = 5  # a shared 2-core machine


async def test_a_client_that_stops_answering_pings_loses_its_session_within_interval_plus_timeout(
    server_factory, workspace
):
    server = server_factory(args=["--ping-interval", str(PING_INTERVAL), "--ping-timeout", str(PING_TIMEOUT)])
    # Neither client pings on its own; both answer the server's pings until told otherwise.
    async with (
        websockets.connect(server.url, ping_interval=None) as alive,
        websockets.connect(server.url, ping_interval=None) as silent,
    ):
        alive_id = await ws_open_session(alive, workspace)
        silent_id = await ws_open_session(silent, workspace)
        silent.transport.pause_reading()  # the peer goes silent: pings are never read, so never answered

        async def silent_gone() -> bool:
            return not await LiveSession.objects.filter(pk=silent_id).aexists()

        bound = PING_INTERVAL + PING_TIMEOUT + DAPHNE_TIMEOUT_CHECK_PERIOD + MARGIN
        took = await wait_until(silent_gone, bound, what="the silent peer's row removed")
        print(f"silent peer's session removed after {took:.1f} s (bound {bound} s)")
        # The responsive client lived through the same pings.
        assert await LiveSession.objects.filter(pk=alive_id).aexists()
        await alive.send(new_session_frame(workspace))
        assert json.loads(await alive.recv())["code"] == "session_exists"
        silent.transport.abort()


# --- flooding --------------------------------------------------------------------------------------


CALM_PACE = 0.02  # the calm client's pause between frames: 10 before and ~10 during stay inside a burst of 40
# The flood's frames queue in the same process ahead of the calm client's: what the calm
# client may lose, beyond its own quiet round trip, while the flood is read and discarded.
FLOOD_ALLOWANCE = 0.25


async def round_trip(ws) -> float:
    start = time.monotonic()
    await ws.send(new_session_frame(""))
    assert json.loads(await ws.recv())["code"] == "invalid_request"
    return time.monotonic() - start


async def test_a_flood_is_rate_limited_then_closed_4429_while_another_client_keeps_its_latency(
    daphne_server, workspace
):
    async with websockets.connect(daphne_server.url) as calm, websockets.connect(daphne_server.url) as flood:
        await ws_open_session(calm, workspace)
        before = []
        for _ in range(10):
            before.append(await round_trip(calm))
            await asyncio.sleep(CALM_PACE)

        async def flooder() -> list[str]:
            sent = 0
            with pytest.raises(websockets.ConnectionClosed):
                while sent < 2000:
                    await flood.send(new_session_frame(""))
                    sent += 1
            return sent

        async def flood_codes() -> list[str]:
            codes = []
            with pytest.raises(websockets.ConnectionClosed):
                while True:
                    codes.append(json.loads(await asyncio.wait_for(flood.recv(), timeout=10))["code"])
            return codes

        sender = asyncio.create_task(flooder())
        receiver = asyncio.create_task(flood_codes())
        during = []
        while not receiver.done():
            during.append(await round_trip(calm))
            await asyncio.sleep(CALM_PACE)
        codes = await receiver
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)

    assert flood.close_code == 4429
    assert codes[-1] == "rate_limit_exceeded"
    assert "rate_limited" in codes
    assert set(codes) == {"invalid_request", "rate_limited", "rate_limit_exceeded"}
    quiet, flooded = statistics.median(before), statistics.median(during)
    print(
        f"calm client round trip, median and max: before {quiet * 1000:.1f} / {max(before) * 1000:.1f} ms,"
        f" during the flood {flooded * 1000:.1f} / {max(during) * 1000:.1f} ms ({len(during)} trips)"
    )
    assert flooded <= quiet + FLOOD_ALLOWANCE
    assert max(during) <= max(before) + 2 * FLOOD_ALLOWANCE
    daphne_server.assert_no_traceback()


# --- mixed load ------------------------------------------------------------------------------------

GOOD_SESSIONS = 100
BAD_FRAMES = 2000
CONCURRENCY = 20
CLOSING_KINDS = [  # (frame, code, close code): one frame per connection
    ("not json", "invalid_json", 4400),
    (b"\x00\x01", "unsupported_frame", 4415),
    ('{"type": "rm_rf"}', "unknown_type", 4400),
    ('[{"type": "new_session"}]', "invalid_json", 4400),
]
OPEN_KINDS = [
    (new_session_frame(""), "invalid_request"),
    (new_session_frame("/nonexistent/dir"), "workspace_not_found"),
]
FRAMES_PER_OPEN_CONNECTION = 10


async def test_100_good_sessions_survive_2000_bad_frames_on_other_connections(daphne_server, tmp_path: Path):
    url = daphne_server.url
    workspaces = []
    for n in range(GOOD_SESSIONS):
        (tmp_path / f"w{n}").mkdir()
        workspaces.append(tmp_path / f"w{n}")
    gate = asyncio.Semaphore(CONCURRENCY)

    async def closing_client(n: int) -> tuple:
        frame, code, close_code = CLOSING_KINDS[n % len(CLOSING_KINDS)]
        async with gate, websockets.connect(url, open_timeout=30) as ws:
            return await explained(ws, f"closing client {n}", closing_exchange(ws, frame, code, close_code))

    async def closing_exchange(ws, frame, code: str, close_code: int) -> tuple:
        await ws.send(frame)
        reply = json.loads(await asyncio.wait_for(ws.recv(), timeout=30))
        return (code, close_code), (reply["code"], await close_code_after(ws))

    async def open_client(n: int) -> tuple:
        async with gate, websockets.connect(url, open_timeout=30) as ws:
            return await explained(ws, f"open client {n}", open_exchange(ws, n))

    async def open_exchange(ws, n: int) -> tuple:
        expected = []
        for i in range(FRAMES_PER_OPEN_CONNECTION):
            frame, code = OPEN_KINDS[(n + i) % len(OPEN_KINDS)]
            await ws.send(frame)
            expected.append(code)
        return expected, [json.loads(await asyncio.wait_for(ws.recv(), timeout=30))["code"] for _ in expected]

    async def explained(ws, who: str, exchange) -> tuple:
        """The exchange's outcome; a failure names the client and its port, to find it in the server's log."""
        try:
            return await exchange
        except Exception as error:
            port = ws.local_address[1]
            raise AssertionError(f"{who} (client port {port}): {error!r}") from error

    good = []
    try:
        for workspace in workspaces:
            ws = await websockets.connect(url)
            good.append(ws)
            await ws_open_session(ws, workspace)
        assert await LiveSession.objects.acount() == GOOD_SESSIONS

        open_connections = BAD_FRAMES // 2 // FRAMES_PER_OPEN_CONNECTION
        closing_connections = BAD_FRAMES - open_connections * FRAMES_PER_OPEN_CONNECTION
        start = time.monotonic()
        async with asyncio.timeout(240):
            outcomes = await asyncio.gather(
                *(closing_client(n) for n in range(closing_connections)),
                *(open_client(n) for n in range(open_connections)),
                return_exceptions=True,
            )
        wrong = [outcome for outcome in outcomes if isinstance(outcome, BaseException) or outcome[0] != outcome[1]]
        assert not wrong, wrong_answers_explained(wrong, daphne_server.log())
        took = time.monotonic() - start
        print(f"{BAD_FRAMES} bad frames on {closing_connections + open_connections} connections in {took:.1f} s")

        assert await LiveSession.objects.acount() == GOOD_SESSIONS
        for ws in good:
            await ws.send(new_session_frame("/", request_id="probe"))
            assert json.loads(await ws.recv())["code"] == "session_exists"
    finally:
        await asyncio.gather(*(ws.close() for ws in good), return_exceptions=True)
    daphne_server.assert_no_traceback()


def wrong_answers_explained(wrong: list, log: str) -> str:
    """The wrong outcomes, for each failed client the server's log lines about its port, and its first warnings."""
    lines = [f"{len(wrong)} bad connections got the wrong answer:"]
    for outcome in wrong[:3]:
        lines.append(f"  {outcome!r}")
        port = re.search(r"client port (\d+)", str(outcome))
        if port:
            lines.extend(f"    | {line}" for line in log.splitlines() if f":{port[1]}" in line)
    loud = [line for line in log.splitlines() if re.search(r" (WARNING|ERROR|CRITICAL) |Traceback", line)]
    lines.append(f"the server's log has {len(loud)} warnings and errors; the first ones:")
    lines.extend(f"    | {line}" for line in loud[:10])
    return "\n".join(lines)


# --- the registry goes away ------------------------------------------------------------------------


@pytest.mark.production
async def test_registry_down_answers_unavailable_and_the_same_connection_recovers(
    database_proxy, server_factory, workspace
):
    proxy = database_proxy
    server = server_factory(env={"DATABASE_URL": database_url_via(proxy)})
    try:
        async with websockets.connect(server.url) as before, websockets.connect(server.url) as ws:
            before_id = await ws_open_session(before, workspace)

            proxy.cut()
            for request_id in (1, 2):
                await ws.send(new_session_frame(workspace, request_id=request_id))
                reply = json.loads(await asyncio.wait_for(ws.recv(), timeout=30))
                assert (reply["type"], reply["code"], reply["request_id"]) == ("error", "unavailable", request_id)
            assert await LiveSession.objects.acount() == 1

            proxy.restore()
            await ws.send(new_session_frame(workspace, request_id=3))
            reply = json.loads(await asyncio.wait_for(ws.recv(), timeout=30))
            assert (reply["type"], reply["request_id"]) == ("new_session", 3)
            assert await LiveSession.objects.filter(pk=reply["session_id"]).aexists()
            assert await LiveSession.objects.filter(pk=before_id).aexists()
    finally:
        await proxy.stop()
    log = server.log()
    assert "registry write failed" in log
    server.assert_no_traceback()


CHANNEL_LAYER_BLOCK_SECONDS = 5  # channels-redis's BZPOPMIN timeout, also redis-py 8's default read timeout


@pytest.mark.production
async def test_idle_sessions_outlive_the_channel_layers_blocking_reads(production_services, daphne_server, workspace):
    """A consumer waits on Redis in 5 s blocking reads; idling through several must not kill it (1011)."""
    async with websockets.connect(daphne_server.url) as ws:
        session_id = await ws_open_session(ws, workspace)
        await asyncio.sleep(CHANNEL_LAYER_BLOCK_SECONDS * 2 + 2)  # the idleness under test, not a wait for an effect
        await ws.send(new_session_frame(workspace))
        assert json.loads(await ws.recv())["code"] == "session_exists"
        assert await LiveSession.objects.filter(pk=session_id).aexists()
    daphne_server.assert_no_traceback()


# --- slow handshakes ------------------------------------------------------------------------------

TWISTED_REQUEST_TIMEOUT = 60  # twisted.web.http's idle timeout for a connection, not configurable in daphne


# A minute of waiting that neither the registry nor the channel layer can change (the
# request never reaches the application): it runs in the embedded pass only.
@pytest.mark.skipif(
    "sqlite" not in settings.DATABASES["default"]["ENGINE"],
    reason="daphne's own timeout, the same on every registry: checked once, in the embedded pass",
)
async def test_daphne_closes_half_open_handshakes_after_its_60_s_idle_timeout(daphne_server):
    """Slowloris: one socket sends nothing, one half a request; daphne must hang up on both."""
    silent_reader, silent_writer = await asyncio.open_connection("127.0.0.1", daphne_server.port)
    half_reader, half_writer = await asyncio.open_connection("127.0.0.1", daphne_server.port)
    half_writer.write(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n")
    await half_writer.drain()
    start = time.monotonic()

    async def closed_after(reader: asyncio.StreamReader) -> float:
        with contextlib.suppress(ConnectionError):
            while await reader.read(1024):
                pass
        return time.monotonic() - start

    async with asyncio.timeout(TWISTED_REQUEST_TIMEOUT + MARGIN * 3):
        took = await asyncio.gather(closed_after(silent_reader), closed_after(half_reader))
    print(f"daphne closed the idle and the half-sent handshake after {took[0]:.1f} s and {took[1]:.1f} s")
    assert all(seconds >= TWISTED_REQUEST_TIMEOUT - 5 for seconds in took)
    silent_writer.close()
    half_writer.close()
