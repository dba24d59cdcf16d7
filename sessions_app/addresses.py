"""Client addresses: address lists (WSS_METRICS_ALLOWED_IPS, WSS_TRUSTED_PROXIES) parsed in one
way, and who the client is: the socket peer, or the address a trusted proxy forwarded.

`X-Forwarded-For` is believed only when the socket peer is in WSS_TRUSTED_PROXIES (empty
by default: never). The header is then read from the right, skipping trusted proxies; the
first other entry is the client, and it must be an IP address. A header that is too long,
or holds anything but addresses before the client is found, is not believed at all: the
peer stays the client. `ForwardedClientMiddleware` writes the result into `scope["client"]`
(keeping the peer as `scope["wss.peer"]`) once, before anything reads it: Django's
REMOTE_ADDR, the /metrics and /readyz allowlists, the logs and the session rows all see
the same address.
"""

import ipaddress
import logging
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

from .conf import app_settings

logger = logging.getLogger(__name__)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
MAX_FORWARDED_FOR_BYTES = 1024  # a proxy chain of dozens of addresses; longer is not ours


def network_parse(entry: str) -> Network | None:
    """An address or CIDR network (an address is a network of one), or None."""
    try:
        return ipaddress.ip_network(entry.strip(), strict=False)
    except ValueError:
        return None


@lru_cache(maxsize=8)
def networks_parse(entries: tuple[str, ...]) -> tuple[Network, ...]:
    """Addresses and CIDR networks; invalid entries are left out (a system check reports them)."""
    return tuple(network for network in map(network_parse, entries) if network is not None)


def networks_invalid(entries: Iterable[str]) -> list[str]:
    """The entries that are neither an address nor a network: what the system checks report."""
    return [entry for entry in entries if network_parse(entry) is None]


def ip_parse(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An IP address (IPv6 with or without brackets), or None."""
    try:
        return ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None


def address_in(address: str, entries: Iterable[str]) -> bool:
    """Whether `address` is in one of `entries`: addresses or CIDR networks."""
    ip = ip_parse(address)
    return ip is not None and any(ip in network for network in networks_parse(tuple(entries)))


def forwarded_client(peer_host: str, headers: Iterable[tuple[bytes, bytes]], trusted: Iterable[str]) -> str | None:
    """The client a trusted peer forwarded for, or None when the header is absent or not believed."""
    networks = networks_parse(tuple(trusted))
    peer = ip_parse(peer_host)
    if peer is None or not any(peer in network for network in networks):
        return None
    values = [value for name, value in headers if name.lower() == b"x-forwarded-for"]
    if not values:
        return None
    raw = b",".join(values)
    if len(raw) > MAX_FORWARDED_FOR_BYTES:
        logger.warning("X-Forwarded-For from %s is %d bytes long: not believed", peer_host, len(raw))
        return None
    for entry in reversed(raw.decode("latin-1").split(",")):
        ip = ip_parse(entry)
        if ip is None:
            logger.warning("X-Forwarded-For from %s holds a non-address: not believed", peer_host)
            return None
        if not any(ip in network for network in networks):
            return str(ip)
    return None  # every hop is a trusted proxy: the peer is as close to the client as we know


def client_resolve(scope: dict[str, Any]) -> dict[str, Any]:
    """The scope with `client` set to the resolved client (the same scope when it is the peer)."""
    trusted = app_settings.WSS_TRUSTED_PROXIES
    peer = scope.get("client")
    if not trusted or not peer:
        return scope
    client = forwarded_client(str(peer[0]), scope.get("headers", ()), trusted)
    if client is None:
        return scope
    return {**scope, "client": (client, 0), "wss.peer": peer}


def client_is_loopback(scope: dict[str, Any]) -> bool:
    """Whether the (resolved) client is on this machine: loopback, or a server that names no peer.

    Servers leave `client` out for Unix-domain sockets, whose peers are local by definition.
    """
    client = scope.get("client")
    if not client:
        return True
    ip = ip_parse(str(client[0]))
    return ip is not None and ip.is_loopback


class ForwardedClientMiddleware:
    """Resolve `scope["client"]` once for HTTP and WebSocket, before any other layer reads it."""

    def __init__(self, application: Any) -> None:
        self.application = application

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        """`async def`, unlike the inner middlewares: servers tell ASGI 3 from ASGI 2 by it."""
        if scope["type"] in ("http", "websocket"):
            scope = client_resolve(scope)
        return await self.application(scope, receive, send)
