"""`manage.py send_session_event <id> <event> [json]`: send a live session an event; prints its seq.

Runs as the operator of the machine (see create_token.py): no Django permission is asked;
each event is recorded with the operator's login name (sessions_app/audit.py).
"""

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from sessions_app.audit import session_event_audited
from sessions_app.delivery import (
    EventInvalid,
    EventRateLimited,
    EventSessionNotFound,
    EventTooLarge,
    EventUnavailable,
    data_parse,
)

# sysexits.h: EX_DATAERR for input refused, EX_NOINPUT for no such session, EX_TEMPFAIL for the rate
# or an unavailable registry.
EXIT_INVALID, EXIT_NOT_FOUND, EXIT_RATE_LIMITED = 65, 66, 75


class Command(BaseCommand):
    help = (
        "Send a live session an event: its client gets a `session_event` frame (a resumable session "
        "that is detached gets it when it resumes). Prints the event's seq. `json` is the event's data "
        f"(default null). Exits {EXIT_INVALID} on a bad name, data or size, {EXIT_NOT_FOUND} when there "
        f"is no such live session, {EXIT_RATE_LIMITED} over WSS_SESSION_EVENT_RATE or when the registry is "
        "unavailable (nothing was done: try again)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("session_id")
        parser.add_argument("event", help="the event name: ^[a-z0-9][a-z0-9_.-]{0,63}$")
        parser.add_argument("json", nargs="?", default="null", help="the data, as JSON text (default: null)")

    def handle(self, *args, session_id: str, event: str, json: str, **options) -> None:
        try:
            data = data_parse(json)
        except ValueError as error:
            raise CommandError(f"the data is not JSON: {error}", returncode=EXIT_INVALID) from None
        if settings.CHANNEL_LAYERS["default"]["BACKEND"].endswith("InMemoryChannelLayer"):
            self.stderr.write(
                "warning: REDIS_URL is unset: the event is recorded, but only a server process in this "
                "process's channel layer could deliver it at once; a resumable session gets it on resume."
            )
        try:
            seq = session_event_audited(session_id, event=event, data=data, via="send_session_event command")
        except EventSessionNotFound as error:
            raise CommandError(str(error), returncode=EXIT_NOT_FOUND) from None
        except (EventInvalid, EventTooLarge) as error:
            raise CommandError(str(error), returncode=EXIT_INVALID) from None
        except (EventRateLimited, EventUnavailable) as error:
            raise CommandError(str(error), returncode=EXIT_RATE_LIMITED) from None
        self.stdout.write(str(seq))
