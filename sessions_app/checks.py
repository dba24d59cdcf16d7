"""The app's system checks: configuration errors stop a start, risks are warned about.

Registered by SessionsAppConfig.ready(); run by `manage.py check` and, at every server
start, by sessions_app/startup.py.
"""

import os
import sys
from collections.abc import Mapping, Sequence

from django.core import checks

from .addresses import networks_invalid
from .compat import versions_differing
from .conf import app_settings
from .middleware import unrestricted
from .workspaces import roots_check


def check_workspace_roots(app_configs, **kwargs) -> list[checks.CheckMessage]:
    """WSS_WORKSPACE_ROOTS that do not exist are a configuration error at start-up."""
    return [
        checks.Error(problem, hint="Fix WSS_WORKSPACE_ROOTS: absolute, existing directories.", id="wss.E001")
        for problem in roots_check(app_settings.WSS_WORKSPACE_ROOTS)
    ]


def check_heartbeat_bounds(app_configs, **kwargs) -> list[checks.CheckMessage]:
    """A timeout under two heartbeats would reap live instances after one late beat."""
    heartbeat, timeout = app_settings.WSS_HEARTBEAT_SECONDS, app_settings.WSS_INSTANCE_TIMEOUT_SECONDS
    if heartbeat > 0 and timeout >= 2 * heartbeat:
        return []
    return [
        checks.Error(
            f"WSS_HEARTBEAT_SECONDS={heartbeat:g} and WSS_INSTANCE_TIMEOUT_SECONDS={timeout:g}: the heartbeat "
            "must be positive and the timeout at least twice the heartbeat.",
            hint="Defaults: heartbeat 5, timeout 25 (a crash is reaped within 30 s).",
            id="wss.E002",
        )
    ]


def networks_check(setting: str, *, hint: str, check_id: str) -> list[checks.CheckMessage]:
    """One error per entry of the list setting `setting` that is not an IP address or network."""
    return [
        checks.Error(f"{setting} entry {entry!r} is not an IP address or network", hint=hint, id=check_id)
        for entry in networks_invalid(getattr(app_settings, setting))
    ]


def check_metrics_allowed_ips(app_configs, **kwargs) -> list[checks.CheckMessage]:
    """Every WSS_METRICS_ALLOWED_IPS entry must be an address or a network."""
    return networks_check(
        "WSS_METRICS_ALLOWED_IPS", hint="Use addresses or CIDR networks: 127.0.0.1,::1,10.0.0.0/8.", check_id="wss.E010"
    )


def check_trusted_proxies(app_configs, **kwargs) -> list[checks.CheckMessage]:
    """Every WSS_TRUSTED_PROXIES entry must be an address or a network."""
    return networks_check(
        "WSS_TRUSTED_PROXIES",
        hint="List your proxies' addresses or CIDR networks: 10.0.0.5,10.1.0.0/16.",
        check_id="wss.E011",
    )


def check_server_proxy_headers(app_configs, **kwargs) -> list[checks.CheckMessage]:
    """The server must not believe X-Forwarded-For from any peer: WSS_TRUSTED_PROXIES decides."""
    problem = server_proxy_header_problem(sys.argv, os.environ)
    if problem is None:
        return []
    return [
        checks.Error(
            problem,
            hint="Drop the server's proxy-header option and list the proxies in WSS_TRUSTED_PROXIES.",
            id="wss.E012",
        )
    ]


def check_unrestricted(app_configs, **kwargs) -> list[checks.CheckMessage]:
    """Deploy check: without roots or authentication, anyone who reaches the port opens any directory."""
    if not unrestricted():
        return []
    return [
        checks.Warning(
            "Neither WSS_WORKSPACE_ROOTS nor WSS_REQUIRE_AUTH is set: any client could open a session on "
            "any directory of this machine. Clients beyond loopback are refused unless they log in or "
            "present an API token.",
            hint="Set WSS_WORKSPACE_ROOTS to the directories sessions may use, and WSS_REQUIRE_AUTH=true.",
            id="wss.W020",
        )
    ]


def check_resume_grace(app_configs, **kwargs) -> list[checks.CheckMessage]:
    """WSS_RESUME_GRACE_SECONDS is a duration: 0 (resume off) or more."""
    grace = app_settings.WSS_RESUME_GRACE_SECONDS
    if isinstance(grace, int | float) and grace >= 0:
        return []
    return [
        checks.Error(
            f"WSS_RESUME_GRACE_SECONDS={grace!r} must be a number of seconds, 0 or more.",
            hint="Default 30; 0 turns resume off.",
            id="wss.E013",
        )
    ]


def check_library_versions(app_configs, **kwargs) -> list[checks.CheckMessage]:
    """A library whose private parts sessions_app/compat.py uses is at a version it was not checked against."""
    return [
        checks.Warning(
            f"{name} {installed} is installed; sessions_app/compat.py was checked against {name} {checked}.",
            hint="Run tests/test_compat.py, re-check each section of sessions_app/compat.py, then update "
            "CHECKED_VERSIONS there and the pin in requirements.txt.",
            id="wss.W030",
        )
        for name, (checked, installed) in versions_differing().items()
    ]


def server_proxy_header_problem(argv: Sequence[str], environ: Mapping[str, str]) -> str | None:
    """Whether the server was told to believe X-Forwarded-For from any peer (argv of daphne, uvicorn)."""
    program = os.path.basename(argv[0]) if argv else ""
    options = list(argv[1:])
    if program == "daphne" and "--proxy-headers" in options:
        return (
            "daphne --proxy-headers takes X-Forwarded-For from every peer, so any client could forge its "
            "address (and pass the /metrics allowlist)."
        )
    if program == "uvicorn" and "--no-proxy-headers" not in options:
        allowed = environ.get("FORWARDED_ALLOW_IPS", "")
        for index, option in enumerate(options):
            if option == "--forwarded-allow-ips" and index + 1 < len(options):
                allowed = options[index + 1]
            elif option.startswith("--forwarded-allow-ips="):
                allowed = option.partition("=")[2]
        if "*" in [entry.strip() for entry in allowed.split(",")]:
            return (
                "uvicorn trusts X-Forwarded-For from every peer (--forwarded-allow-ips / FORWARDED_ALLOW_IPS "
                "is '*'), so any client could forge its address."
            )
    return None
