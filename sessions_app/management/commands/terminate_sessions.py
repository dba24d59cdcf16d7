"""`manage.py terminate_sessions <id>...`: end live sessions wherever they live.

Runs as the operator of the machine (see create_token.py): no Django permission is asked;
each terminate is recorded with the operator's login name (sessions_app/audit.py).
"""

import uuid

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from sessions_app.audit import sessions_terminate_audited, terminate_summary
from sessions_app.terminate import TerminateResult

# sysexits.h EX_TEMPFAIL: a temporary failure, running the command again may work.
EXIT_NOT_DELIVERED = 75


class Command(BaseCommand):
    help = (
        "End live sessions by id, on whichever server process holds them: the client gets "
        "`session_terminated` and close 4410, and the row is removed. Needs REDIS_URL to reach "
        "sessions held by server processes (the in-memory channel layer cannot). Exits 1 when "
        f"an id was not found, {EXIT_NOT_DELIVERED} when the channel layer failed (nothing was done: run it again)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("session_ids", nargs="+", type=str, metavar="session_id")

    def handle(self, *args, session_ids: list[str], **options) -> None:
        try:
            ids = [uuid.UUID(value) for value in session_ids]
        except ValueError as error:
            raise CommandError(f"not a session id: {error}") from None
        if settings.CHANNEL_LAYERS["default"]["BACKEND"].endswith("InMemoryChannelLayer"):
            self.stderr.write(
                "warning: REDIS_URL is unset, so only sessions of dead instances can be ended from here; "
                "live ones need the channel layer that the servers share."
            )
        results = sessions_terminate_audited(ids, via="terminate_sessions command")
        self.stdout.write(terminate_summary(results))
        if failed := results[TerminateResult.NOT_DELIVERED]:
            raise CommandError(
                f"{failed} session(s) not terminated: the channel layer (Redis) is unavailable; nothing was done "
                "to them, run the command again",
                returncode=EXIT_NOT_DELIVERED,
            )
        if missing := results[TerminateResult.NOT_FOUND]:
            raise CommandError(f"{missing} session(s) not found")
