"""Who terminated which session, or sent it an event, and when: the admin's history and one log line each.

Every terminate, from the admin, the sessions API or a management command, goes through
`session_terminate_audited`, alone or in a batch. A user's terminate becomes an admin
LogEntry (the admin's history and its *Recent actions*: who, when, which session) and a
`session_terminate` event line; a command's has no Django user (it runs as the machine's
operator), so its line names the operator's login name. Events sent through the API, the
command and the admin go through `session_event_audited` and are recorded the same way (a CHANGE entry).
"""

import getpass
import uuid
from collections import Counter
from collections.abc import Iterable
from typing import Any

from asgiref.sync import async_to_sync
from django.contrib.admin.models import CHANGE, DELETION, LogEntry
from django.contrib.contenttypes.models import ContentType
from django.db import transaction

from . import events
from .delivery import event_accept, event_deliver
from .models import LiveSession
from .terminate import TerminateResult, session_terminate_request

# The results that did something; the others did nothing. DELIVERED means only that the
# channel layer took the terminate for the server that holds the session, which closes it;
# REMOVED that the row of a session no server held was deleted here: it ended.
ACTED = (TerminateResult.DELIVERED, TerminateResult.REMOVED)


def operator_name() -> str:
    """The login name of whoever runs a management command."""
    try:
        return f"operator:{getpass.getuser()}"
    except (KeyError, OSError):
        return "operator:unknown"


def history_recorded(*, session_id: uuid.UUID | str, user, action_flag: int, message: str) -> str:
    """An admin history entry for a user's act on a session (none for an operator's); the actor's name."""
    if user is None or not user.is_authenticated:
        return operator_name()
    LogEntry.objects.create(
        user_id=user.pk,
        content_type=ContentType.objects.get_for_model(LiveSession),
        object_id=str(session_id),
        object_repr=str(session_id),
        action_flag=action_flag,
        change_message=message,
    )
    return user.get_username()


def session_event_audited(session_id: uuid.UUID | str, *, event: str, data: Any, via: str, user=None) -> int:
    """Send one event and record it, the event and its history entry in one transaction; its seq.

    The delivery's EventErrors pass through (nothing is recorded then).
    """
    with transaction.atomic():
        accepted = event_accept(session_id=session_id, event=event, data=data)
        message = f"Sent event {event} (seq {accepted.seq}) through the {via}."
        actor = history_recorded(session_id=session_id, user=user, action_flag=CHANGE, message=message)
    async_to_sync(event_deliver)(accepted)
    events.session_event_sent(session_id=session_id, actor=actor, via=via, event=event, seq=accepted.seq)
    return accepted.seq


def terminate_recorded(*, session_id: uuid.UUID | str, result: TerminateResult, via: str, user=None) -> None:
    """Record one terminate: the event line always (with its result), a LogEntry when a user ended a session."""
    if result in ACTED:
        message = f"{result_text(result).capitalize()} through the {via}."
        actor = history_recorded(session_id=session_id, user=user, action_flag=DELETION, message=message)
    else:
        actor = user.get_username() if user is not None and user.is_authenticated else operator_name()
    events.session_terminate_requested(session_id=session_id, actor=actor, via=via, result=result)


def session_terminate_audited(session_id: uuid.UUID | str, *, via: str, user=None) -> TerminateResult:
    """Terminate one session and record what happened."""
    result = async_to_sync(session_terminate_request)(session_id=session_id)
    if result is not TerminateResult.NOT_FOUND:
        terminate_recorded(session_id=session_id, result=result, via=via, user=user)
    return result


def sessions_terminate_audited_by_id(
    session_ids: Iterable[uuid.UUID | str], *, via: str, user=None
) -> dict[str, TerminateResult]:
    """Terminate each session once and record each one found; each one's result, by id, in the order given."""
    ids = dict.fromkeys(str(session_id) for session_id in session_ids)
    return {session_id: session_terminate_audited(session_id, via=via, user=user) for session_id in ids}


def sessions_terminate_audited(session_ids: Iterable[uuid.UUID | str], *, via: str, user=None) -> Counter:
    """Terminate each session and record each one found; how many ended up in each result."""
    return Counter(session_terminate_audited(session_id, via=via, user=user) for session_id in session_ids)


def result_text(result: TerminateResult) -> str:
    """What one terminate did, in words."""
    return "terminate delivered" if result is TerminateResult.DELIVERED else "terminated"


def terminate_summary(results: Counter) -> str:
    """What a batch of terminates did, in words: sessions ended here, and terminates delivered to their servers."""
    removed, delivered = results[TerminateResult.REMOVED], results[TerminateResult.DELIVERED]
    parts = []
    if removed or not delivered:
        parts.append(f"Terminated {removed} session{'' if removed == 1 else 's'}.")
    if delivered:
        parts.append(
            f"Terminate delivered to {delivered} session{'' if delivered == 1 else 's'}: "
            f"{'its server closes it' if delivered == 1 else 'their servers close them'}."
        )
    return " ".join(parts)
