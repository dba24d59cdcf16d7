"""`manage.py reap_sessions`: remove the sessions of server instances that stopped heartbeating."""

from django.core.management.base import BaseCommand, CommandParser

from sessions_app.conf import app_settings
from sessions_app.instances import sessions_reap_sync


class Command(BaseCommand):
    help = (
        "Remove server instances whose heartbeat is older than WSS_INSTANCE_TIMEOUT_SECONDS, "
        "and their sessions. Safe to run at any time, from cron or a deploy hook."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--timeout",
            type=float,
            default=None,
            help="Seconds without a heartbeat after which an instance is dead "
            f"(default: WSS_INSTANCE_TIMEOUT_SECONDS, now {app_settings.WSS_INSTANCE_TIMEOUT_SECONDS:g}).",
        )

    def handle(self, *args, timeout: float | None, **options) -> None:
        if timeout is not None and timeout < 0:
            self.stderr.write("--timeout must not be negative")
            raise SystemExit(2)
        reaped = sessions_reap_sync(timeout=timeout)
        self.stdout.write(f"Reaped {reaped} session{'' if reaped == 1 else 's'}.")
