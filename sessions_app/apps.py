"""App configs: the sessions app, and the admin with a live-session count on its index."""

from typing import TYPE_CHECKING

from django.apps import AppConfig
from django.contrib.admin import apps as admin_apps
from django.core import checks

if TYPE_CHECKING:
    from .message_types import Registry


class SessionsAppConfig(AppConfig):
    name = "sessions_app"
    verbose_name = "Live sessions"
    default = True
    message_types: "Registry"  # every installed app's client message types, built in ready()

    def ready(self) -> None:
        checks.register(check_workspace_roots, "wss")
        checks.register(check_heartbeat_bounds, "wss")
        checks.register(check_metrics_allowed_ips, "wss")
        checks.register(check_trusted_proxies, "wss")
        checks.register(check_server_proxy_headers, "wss")
        checks.register(check_unrestricted, "wss", deploy=True)
        checks.register(check_resume_grace, "wss")
        # Every installed app's client message types, checked now: a bad declaration stops the start.
        from .message_types import Registry, app_modules

        self.message_types = Registry.from_modules(app_modules(self.apps.get_app_configs()))


class WssAdminConfig(admin_apps.AdminConfig):
    default = False
    default_site = "sessions_app.admin_site.WssAdminSite"


def check_workspace_roots(app_configs, **kwargs) -> list[checks.CheckMessage]:
    """WSS_WORKSPACE_ROOTS that do not exist are a configuration error at start-up."""
    from .conf import app_settings
    from .workspaces import roots_check

    return [
        checks.Error(problem, hint="Fix WSS_WORKSPACE_ROOTS: absolute, existing directories.", id="wss.E001")
        for problem in roots_check(app_settings.WSS_WORKSPACE_ROOTS)
    ]


def check_heartbeat_bounds(app_configs, **kwargs) -> list[checks.CheckMessage]:
    """A timeout under two heartbeats would reap live instances after one late beat."""
    from .conf import app_settings

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
    import ipaddress

    from .conf import app_settings

    problems = []
    for entry in getattr(app_settings, setting):
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            problems.append(
                checks.Error(f"{setting} entry {entry!r} is not an IP address or network", hint=hint, id=check_id)
            )
    return problems


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
    import os
    import sys

    from .startup import server_proxy_header_problem

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
    from .middleware import unrestricted

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
    from .conf import app_settings

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
