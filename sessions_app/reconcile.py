"""Reconciliation: make this instance's rows equal the sessions its connections hold, and close the lost ones.

Runs on every heartbeat. Rows no connection holds are orphans (a delete or detach that
failed); held sessions whose rows are gone were ended by the registry's authority.
"""

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from django.db import transaction
from django.utils import timezone

from .connections import sessions_held
from .database import registry_timeout
from .errors import SessionLost
from .models import LiveSession
from .process import process_state
from .sessions import registry_writer

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Reconciliation:
    """What a reconciliation did: orphan rows removed or detached, held sessions without their row."""

    removed: int
    lost: frozenset[uuid.UUID]
    detached: int = 0  # resumable orphans: detached, not removed, so their clients can resume
    moved: frozenset[uuid.UUID] = frozenset()  # held here, but the row names another connection now


def sessions_reconcile_sync(*, held: Mapping[uuid.UUID, str], in_flight: frozenset[uuid.UUID]) -> Reconciliation:
    """Make this instance's rows equal the sessions it holds (run on the writer's thread).

    `held` maps each session a connection holds to that connection's channel. Rows no
    connection holds and no write in flight explains are orphans: a non-resumable one is
    deleted, a resumable one detached (its connection ended and the detach did not get
    through).
    Detached rows belong to no instance, so they are never orphans here. Held sessions
    without a row are reported, not recorded again: the registry's authority (a reaper, an
    operator) removed them, and writing them back could revive a session it ended. Held
    sessions whose row is attached to another connection were resumed there: `moved`.
    """
    boot_id = process_state().identity.boot_id
    with transaction.atomic():
        rows = {
            pk: (channel_name, resumable)
            for pk, channel_name, resumable in LiveSession.objects.filter(instance_id=boot_id).values_list(
                "pk", "channel_name", "resumable"
            )
        }
        orphans = set(rows) - set(held) - in_flight
        resumable_orphans = {pk for pk in orphans if rows[pk][1]}
        detached = 0
        if resumable_orphans:
            detached = LiveSession.objects.filter(instance_id=boot_id, pk__in=resumable_orphans).update(
                instance=None, channel_name="", detached_at=timezone.now()
            )
        if orphans - resumable_orphans:
            LiveSession.objects.filter(instance_id=boot_id, pk__in=orphans - resumable_orphans).delete()
        missing = set(held) - set(rows)
        moved_away = set()
        if missing:
            attached = LiveSession.objects.filter(pk__in=missing, detached_at__isnull=True)
            moved_away = set(attached.values_list("pk", flat=True))
        moved_here = {pk for pk, channel in held.items() if pk in rows and rows[pk][0] != channel}
    return Reconciliation(
        removed=len(orphans - resumable_orphans),
        lost=frozenset(missing - moved_away),
        detached=detached,
        moved=frozenset(moved_away | moved_here),
    )


async def sessions_reconcile(*, held: Mapping[uuid.UUID, str]) -> Reconciliation:
    """Reconcile this instance's rows with `held`, the sessions its connections hold right now (id -> channel).

    Queued on the registry writer behind every write submitted so far, in the same step
    as the snapshot of writes in flight (inserts and resumes), so no write can slip between the two.
    """
    future = process_state().inserts_in_flight.call_after_writes(
        registry_writer, lambda in_flight: sessions_reconcile_sync(held=held, in_flight=in_flight)
    )
    return await asyncio.wait_for(future, registry_timeout())


async def reconcile() -> Reconciliation:
    """Make this instance's rows equal the sessions it holds; close held sessions whose rows are gone.

    A missing row means the registry's authority (a reaper, an operator) ended the
    session: it is closed with `session_lost` (4503), never recorded again. A resumable
    session whose row now names another connection was resumed there and the notice did
    not arrive: it is closed with `session_taken_over` (4409), as the notice would have.
    """
    held = sessions_held()
    result = await sessions_reconcile(held={pk: c.channel_name for pk, c in held.items()})
    for session_id in result.lost | result.moved:
        connection = held[session_id]
        if connection.session is None or connection.session.session_id != session_id:
            continue
        with contextlib.suppress(Exception):
            if session_id in result.moved:
                # What the consumer does when the notice arrives: let go without a write, 4409.
                await connection.session_taken_over({"session_id": str(session_id)})
            else:
                await connection.send_error(SessionLost("This session was lost by the registry; reconnect."))
    if result.removed or result.detached or result.lost or result.moved:
        logger.warning(
            "reconciled the registry: removed %d and detached %d row(s) no connection held, closed %d session(s)"
            " whose rows were gone and %d resumed elsewhere",
            result.removed,
            result.detached,
            len(result.lost),
            len(result.moved),
        )
    return result
