"""App configs: the sessions app (its system checks: checks.py), and the admin with a live-session count."""

from django.apps import AppConfig
from django.contrib.admin import apps as admin_apps
from django.core import checks


class SessionsAppConfig(AppConfig):
    name = "sessions_app"
    verbose_name = "Live sessions"
    default = True

    def ready(self) -> None:
        # Imported here: the checks read the app's modules, which need the apps loaded.
        from . import checks as wss

        checks.register(wss.check_workspace_roots, "wss")
        checks.register(wss.check_heartbeat_bounds, "wss")
        checks.register(wss.check_metrics_allowed_ips, "wss")
        checks.register(wss.check_trusted_proxies, "wss")
        checks.register(wss.check_server_proxy_headers, "wss")
        checks.register(wss.check_unrestricted, "wss", deploy=True)
        checks.register(wss.check_resume_grace, "wss")
        checks.register(wss.check_library_versions, "wss")


class WssAdminConfig(admin_apps.AdminConfig):
    default = False
    default_site = "sessions_app.admin_site.WssAdminSite"
