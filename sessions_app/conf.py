"""The app's knobs, read in one place with their documented defaults.

Values are kept once read, and read again when a setting changes (`override_settings`,
the tests' `settings` fixture).
`wssproject.settings` fills them from `WSS_*` environment variables, parsed as these
defaults are; this module imports no other module of the app, so settings can import it.
"""

from typing import Any

from django.conf import settings as django_settings
from django.core.signals import setting_changed

DEFAULTS: dict[str, Any] = {
    "WSS_MAX_MESSAGE_BYTES": 65536,
    "WSS_ALLOWED_ORIGINS": [],
    "WSS_REQUIRE_ORIGIN": False,
    "WSS_WORKSPACE_ROOTS": [],
    "WSS_HEARTBEAT_SECONDS": 5.0,
    "WSS_INSTANCE_TIMEOUT_SECONDS": 25.0,
    "WSS_STOP_TIMEOUT_SECONDS": 15.0,
    "WSS_METRICS_ALLOWED_IPS": ["127.0.0.1", "::1"],
    "WSS_METRICS_TOKEN": "",
    "WSS_READYZ_TIMEOUT_SECONDS": 2.0,
    # A crash is reaped within WSS_INSTANCE_TIMEOUT_SECONDS + WSS_HEARTBEAT_SECONDS.
    # Resume: how long a detached resumable session is kept (expired within it plus one
    # heartbeat); 0 turns resume off.
    "WSS_RESUME_GRACE_SECONDS": 30.0,
    # The longest a caller waits for the registry (a session write, a heartbeat) before
    # answering `unavailable` or counting the call as failed.
    "WSS_REGISTRY_TIMEOUT_SECONDS": 5.0,
    # Access and flooding: see docs/security.md.
    "WSS_REQUIRE_AUTH": False,
    "WSS_RATE_LIMIT": 20.0,
    "WSS_RATE_LIMIT_BURST": 40,
    # Safe defaults and bounds: see docs/security.md.
    "WSS_TRUSTED_PROXIES": [],
    "WSS_WORKSPACE_RESOLVE_TIMEOUT_SECONDS": 2.0,
    "WSS_WORKSPACE_RESOLVE_THREADS": 4,
    "WSS_MAX_QUEUED_FRAMES": 40,
    # Session events (protocol v1.2, delivery.py): the window kept per resumable session for
    # its replay (0: none), and the events per second a session may be sent (0: no bound).
    "WSS_SESSION_EVENTS_KEPT": 1000,
    "WSS_SESSION_EVENT_RATE": 100.0,
}


class AppSettings:
    """Attribute access to the WSS_* settings, falling back to DEFAULTS.

    A value is read from Django's settings once and kept until a setting changes: the
    session path reads them often, and Django's lazy settings cost about 0.6 µs a read.
    """

    def __getattr__(self, name: str) -> Any:
        if name not in DEFAULTS:
            raise AttributeError(f"unknown app setting {name}")
        value = self.__dict__[name] = getattr(django_settings, name, DEFAULTS[name])
        return value

    def forget(self, name: str) -> None:
        """Read `name` from Django's settings again at its next use."""
        self.__dict__.pop(name, None)


app_settings = AppSettings()


def _setting_changed(*, setting: str, **kwargs: Any) -> None:
    # override_settings and pytest-django's `settings` fixture send it.
    app_settings.forget(setting)


setting_changed.connect(_setting_changed)
