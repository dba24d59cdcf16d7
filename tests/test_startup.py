"""Checks at server start: any server importing the application stops on a configuration error."""

import pytest

from .servers import ServerExitedEarly

# The checks at start stop a server before it reaches the registry or the layer.
pytestmark = [pytest.mark.live, pytest.mark.path_independent]


@pytest.mark.parametrize("server_name", ["daphne", "uvicorn"])
@pytest.mark.parametrize(
    ("env", "args", "check_id"),
    [
        ({"WSS_WORKSPACE_ROOTS": "/no/such/root"}, [], "wss.E001"),
        ({"WSS_HEARTBEAT_SECONDS": "10", "WSS_INSTANCE_TIMEOUT_SECONDS": "15"}, [], "wss.E002"),
        ({"WSS_TRUSTED_PROXIES": "10.0.0.0/33"}, [], "wss.E011"),
    ],
    ids=["missing-root", "timeout-under-two-heartbeats", "bad-proxy-network"],
)
def test_a_server_with_a_bad_configuration_stops_with_a_clear_message(server_factory, server_name, env, args, check_id):
    with pytest.raises(ServerExitedEarly) as stopped:
        server_factory(server=server_name, env=env, args=args)
    assert stopped.value.returncode == 3
    assert "refusing to start, the configuration has errors" in stopped.value.log
    assert check_id in stopped.value.log


@pytest.mark.parametrize(
    ("server_name", "env", "args"),
    [
        ("daphne", {}, ["--proxy-headers"]),
        ("uvicorn", {}, ["--forwarded-allow-ips", "*"]),
        ("uvicorn", {"FORWARDED_ALLOW_IPS": "*"}, []),
    ],
    ids=["daphne-proxy-headers", "uvicorn-trust-all", "uvicorn-trust-all-env"],
)
def test_a_server_told_to_believe_every_peers_forwarded_address_does_not_start(server_factory, server_name, env, args):
    with pytest.raises(ServerExitedEarly) as stopped:
        server_factory(server=server_name, env=env, args=args)
    assert stopped.value.returncode == 3
    assert "wss.E012" in stopped.value.log


@pytest.mark.parametrize("server_name", ["daphne", "uvicorn"])
def test_an_unrestricted_server_says_so_at_start(server_factory, server_name, tmp_path):
    unrestricted = server_factory(server=server_name)
    assert "wss.W020" in unrestricted.log()
    restricted = server_factory(server=server_name, env={"WSS_WORKSPACE_ROOTS": str(tmp_path)})
    assert "wss.W020" not in restricted.log()
