"""Forwarded headers are believed only from WSS_TRUSTED_PROXIES, validated and bounded."""

import http.client
import json

import pytest
import websockets

from sessions_app.addresses import forwarded_client
from sessions_app.checks import server_proxy_header_problem
from sessions_app.models import LiveSession

from .communicators import new_session_frame
from .polling import wait_until

XFF = b"x-forwarded-for"


@pytest.mark.parametrize(
    ("peer", "header", "trusted", "expected"),
    [
        ("127.0.0.2", "127.0.0.1", [], None),  # nothing trusted: never believed
        ("127.0.0.2", "127.0.0.1", ["127.0.0.3"], None),  # an untrusted peer's header is ignored
        ("127.0.0.3", "203.0.113.9", ["127.0.0.3"], "203.0.113.9"),
        ("10.0.0.5", "203.0.113.9, 10.0.0.7", ["10.0.0.0/24"], "203.0.113.9"),  # trusted hops skipped
        ("10.0.0.5", "127.0.0.1, 203.0.113.9", ["10.0.0.0/24"], "203.0.113.9"),  # forged left part unread
        ("127.0.0.3", "not-an-address", ["127.0.0.3"], None),
        ("127.0.0.3", "203.0.113.9, <script>", ["127.0.0.3"], None),
        ("127.0.0.3", "1.2.3.4" + ", 1.2.3.4" * 200, ["127.0.0.3"], None),  # over the bound
        ("127.0.0.3", "10.0.0.7", ["127.0.0.3", "10.0.0.7"], None),  # only proxies: the peer stays
        ("::1", "2001:db8::7", ["::1"], "2001:db8::7"),
        ("::1", "[2001:db8::7]", ["::1"], "2001:db8::7"),
    ],
)
def test_forwarded_client(peer, header, trusted, expected):
    assert forwarded_client(peer, [(XFF, header.encode())], trusted) == expected


@pytest.mark.parametrize(
    ("argv", "environ", "refused"),
    [
        (["/x/daphne", "--proxy-headers", "wssproject.asgi:application"], {}, True),
        (["/x/daphne", "wssproject.asgi:application"], {}, False),
        (["/x/uvicorn", "wssproject.asgi:application"], {}, False),  # trusts loopback only by default
        (["/x/uvicorn", "--forwarded-allow-ips", "*", "app"], {}, True),
        (["/x/uvicorn", "--forwarded-allow-ips=10.0.0.1,*", "app"], {}, True),
        (["/x/uvicorn", "app"], {"FORWARDED_ALLOW_IPS": "*"}, True),
        (["/x/uvicorn", "--no-proxy-headers", "app"], {"FORWARDED_ALLOW_IPS": "*"}, False),
        (["/x/uvicorn", "--forwarded-allow-ips", "10.0.0.1", "app"], {}, False),
        (["manage.py", "check"], {"FORWARDED_ALLOW_IPS": "*"}, False),
    ],
)
def test_servers_told_to_believe_every_peer_are_refused(argv, environ, refused):
    assert (server_proxy_header_problem(argv, environ) is not None) is refused


def get_from(server, source: str, path: str, forwarded_for: str | None = None) -> int:
    """GET `path` from the loopback address `source`; the status."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10, source_address=(source, 0))
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for is not None else {}
    try:
        conn.request("GET", path, headers=headers)
        return conn.getresponse().status
    finally:
        conn.close()


@pytest.mark.live
@pytest.mark.parametrize("server_name", ["daphne", "uvicorn"])
def test_a_forged_loopback_address_from_an_untrusted_peer_does_not_open_metrics(server_factory, server_name):
    server = server_factory(server=server_name, env={"WSS_TRUSTED_PROXIES": "127.0.0.3"})
    assert get_from(server, "127.0.0.1", "/metrics") == 200
    assert get_from(server, "127.0.0.2", "/metrics") == 403
    assert get_from(server, "127.0.0.2", "/metrics", forwarded_for="127.0.0.1") == 403
    assert get_from(server, "127.0.0.2", "/readyz?x", forwarded_for="127.0.0.1") == 200  # served, no detail
    # The configured proxy is believed, and only for a valid address.
    assert get_from(server, "127.0.0.3", "/metrics", forwarded_for="127.0.0.1") == 200
    assert get_from(server, "127.0.0.3", "/metrics", forwarded_for="203.0.113.9") == 403
    assert get_from(server, "127.0.0.3", "/metrics", forwarded_for="127.0.0.1, garbage") == 403


@pytest.mark.live
async def test_a_trusted_proxys_client_is_recorded_and_a_forged_one_is_not(server_factory, tmp_path):
    server = server_factory(env={"WSS_TRUSTED_PROXIES": "127.0.0.3", "WSS_WORKSPACE_ROOTS": str(tmp_path)})
    rows = {}
    for source, header in [("127.0.0.3", "203.0.113.9"), ("127.0.0.2", "198.51.100.1"), ("127.0.0.3", "x" * 5000)]:
        async with websockets.connect(
            server.url, additional_headers={"X-Forwarded-For": header}, local_addr=(source, 0)
        ) as ws:
            await ws.send(new_session_frame(tmp_path))
            session_id = json.loads(await ws.recv())["session_id"]
            row = await LiveSession.objects.aget(pk=session_id)
            rows[(source, header[:20])] = row.client_addr
    assert rows[("127.0.0.3", "203.0.113.9")] == "203.0.113.9:0"
    assert rows[("127.0.0.2", "198.51.100.1")].startswith("127.0.0.2:")
    assert rows[("127.0.0.3", "x" * 20)].startswith("127.0.0.3:")
    await wait_until(lambda: "X-Forwarded-For from 127.0.0.3 is 5000 bytes long" in server.log(), 5)


@pytest.mark.live
async def test_an_unrestricted_server_refuses_a_remote_client_forwarded_by_a_trusted_proxy(server_factory):
    server = server_factory(env={"WSS_TRUSTED_PROXIES": "127.0.0.3"})
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with websockets.connect(
            server.url, additional_headers={"X-Forwarded-For": "203.0.113.9"}, local_addr=("127.0.0.3", 0)
        ):
            pass
    assert refused.value.response.status_code == 403
    # An untrusted peer's header is not believed either way: forging a remote address does
    # not get 127.0.0.2 refused, so forging a loopback one gets a remote peer nothing.
    async with websockets.connect(
        server.url, additional_headers={"X-Forwarded-For": "203.0.113.9"}, local_addr=("127.0.0.2", 0)
    ):
        pass
