"""Sessions in the registry: create, close, detach and resume, and the row writes they queue.

Async functions are what consumers call; each runs its queries off the event loop.
Session inserts and deletes go through one group-commit writer (registry_writer.py):
concurrent ones share a transaction, and each caller resumes after its commit. Every wait
on the registry is bounded by WSS_REGISTRY_TIMEOUT_SECONDS. Database failures surface as
`Unavailable`, which the protocol reports without closing; a failed delete is left to
reconciliation (reconcile.py), which makes this instance's rows equal the sessions its
connections hold.
"""

import asyncio
import logging
import secrets
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from django.db import DatabaseError, transaction
from django.utils import timezone

from . import delivery
from .database import registry_timeout
from .errors import Unavailable
from .instances import instance_registered_run, resume_grace_seconds
from .lease import lease_held
from .models import LiveSession
from .process import process_state
from .registry_rows import Row, rows_delete, rows_insert
from .registry_writer import GroupCommitWriter
from .tokens import token_hash

logger = logging.getLogger(__name__)

CLIENT_ADDR_MAX = LiveSession._meta.get_field("client_addr").max_length


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """What a consumer keeps about its session once the row is committed (or reattached)."""

    session_id: uuid.UUID
    workspace_dir: str
    created_at: datetime
    resumable: bool = False
    # Shown to the client once, in the reply; only its hash is stored.
    resume_token: str | None = field(default=None, repr=False, compare=False)


def resume_token_new() -> tuple[str, str]:
    """A fresh resume token (256 bits from the CSPRNG) and the SHA-256 that is stored instead."""
    raw = secrets.token_urlsafe(32)
    return raw, token_hash(raw)


async def session_create(
    *, workspace_dir: str, channel_name: str, client_addr: str, user_id: int | None = None, resumable: bool = False
) -> SessionRecord:
    """Record a new live session; the row is committed before this returns.

    A resumable session (only when WSS_RESUME_GRACE_SECONDS is above 0) gets a resume token,
    returned in the record and stored as its hash.

    Waits at most WSS_REGISTRY_TIMEOUT_SECONDS. A caller that gives up (timed out, or
    cancelled because its client left) leaves no row: the insert is withdrawn if the
    writer had not started it, and deleted if it committed anyway.
    """
    if not await lease_held():
        raise Unavailable("This server cannot reach the session registry right now; try again shortly.")
    token, token_digest = resume_token_new() if resumable and resume_grace_seconds() > 0 else (None, "")
    record = SessionRecord(
        session_id=uuid.uuid4(),
        workspace_dir=workspace_dir,
        created_at=timezone.now(),
        resumable=token is not None,
        resume_token=token,
    )
    insert = SessionInsert(
        session_id=record.session_id,
        workspace_dir=record.workspace_dir,
        created_at=record.created_at,
        channel_name=channel_name,
        # A forwarded-for header can make it anything: keep what fits, rather than fail the row.
        client_addr=client_addr[:CLIENT_ADDR_MAX],
        user_id=user_id,
        resume_token_hash=token_digest,
    )
    try:
        with process_state().inserts_in_flight.writing(record.session_id):
            await asyncio.wait_for(
                registry_writer.submit(insert, undo=SessionDelete(session_id=record.session_id)), registry_timeout()
            )
    except (DatabaseError, TimeoutError) as error:
        logger.warning("registry write failed: %s", str(error) or "timed out")
        raise Unavailable("The session registry is unavailable right now; try again shortly.") from None
    if process_state().fenced():
        # The lease ran out while the insert was under way: peers may reap this row any moment.
        await session_close(session_id=record.session_id)
        raise Unavailable("This server cannot reach the session registry right now; try again shortly.")
    return record


async def session_close(*, session_id: uuid.UUID, channel_name: str | None = None) -> None:
    """Remove a session from the registry. Never raises: reconciliation removes a row left behind.

    With `channel_name`, only while that connection still holds it: a resumable session may
    have moved to another connection, whose row this one must not remove.
    """
    try:
        await asyncio.wait_for(
            registry_writer.submit(SessionDelete(session_id=session_id, channel_name=channel_name)), registry_timeout()
        )
    except Exception as error:
        logger.warning(
            "registry delete of session %s failed (reconciliation will remove it): %s",
            session_id,
            str(error) or type(error).__name__,
        )


async def session_detach(*, session_id: uuid.UUID, channel_name: str) -> bool:
    """Detach a resumable session from its ended connection: the row stays for the grace period.

    Only while `channel_name` still holds it (it may have been resumed elsewhere). Returns
    whether the row was detached; never raises (reconciliation detaches what a failure left).
    """
    try:
        future = registry_writer.call(lambda: session_detach_sync(session_id=session_id, channel_name=channel_name))
        return await asyncio.wait_for(future, registry_timeout())
    except Exception as error:
        logger.warning(
            "registry detach of session %s failed (reconciliation will detach it): %s",
            session_id,
            str(error) or type(error).__name__,
        )
        return False


def session_detach_sync(*, session_id: uuid.UUID, channel_name: str) -> bool:
    """Detach a resumable row that `channel_name` still holds; whether one was."""
    rows = LiveSession.objects.filter(pk=session_id, channel_name=channel_name, resumable=True)
    return bool(rows.update(instance=None, channel_name="", detached_at=timezone.now()))


@dataclass(frozen=True, slots=True)
class Resumed:
    """A session reattached to a connection, and the connection that held it until now, if any."""

    record: SessionRecord
    previous_channel: str
    replay: delivery.Replay  # the events the resume owes its client, read under the row's lock


async def session_resume(
    *,
    session_id: uuid.UUID,
    resume_token: str,
    channel_name: str,
    client_addr: str,
    user_id: int | None,
    last_seq: int | None = None,
) -> Resumed | None:
    """Reattach a resumable session to this connection, spending its token; None when there is none.

    None covers every refusal alike (unknown id, wrong or spent token, expired, never
    resumable, another user's): the caller answers all of them with one message. A session
    still attached elsewhere moves here; `previous_channel` names the connection to tell.
    Runs on the registry writer's thread, in queue order with the reconciler, which counts
    it as in flight until the caller holds the session.
    """
    if resume_grace_seconds() <= 0:
        return None
    if not await lease_held():
        raise Unavailable("This server cannot reach the session registry right now; try again shortly.")
    token, token_digest = resume_token_new()
    operation = SessionResume(
        session_id=session_id,
        presented_hash=token_hash(resume_token),
        new_hash=token_digest,
        channel_name=channel_name,
        client_addr=client_addr[:CLIENT_ADDR_MAX],
        user_id=user_id,
        grace_seconds=resume_grace_seconds(),
        last_seq=last_seq,
    )
    try:
        with process_state().inserts_in_flight.writing(session_id):
            result = await asyncio.wait_for(
                registry_writer.call(lambda: session_resume_sync(operation)), registry_timeout()
            )
    except (DatabaseError, TimeoutError) as error:
        logger.warning("registry resume of session %s failed: %s", session_id, str(error) or "timed out")
        raise Unavailable("The session registry is unavailable right now; try again shortly.") from None
    if result is None:
        return None
    record, previous_channel, replay = result
    return Resumed(record=replace(record, resume_token=token), previous_channel=previous_channel, replay=replay)


def session_resume_sync(operation: "SessionResume") -> tuple[SessionRecord, str, delivery.Replay] | None:
    """Apply a resume: lock the row, check token, owner and grace, move it here.

    Returns the session, the channel that held it (empty if detached) and its replay, or None.
    """
    return instance_registered_run(lambda: _session_move(operation))


@transaction.atomic
def _session_move(operation: "SessionResume") -> tuple[SessionRecord, str, delivery.Replay] | None:
    now = timezone.now()
    row = (
        LiveSession.objects.select_for_update()
        .filter(pk=operation.session_id, resumable=True, resume_token_hash=operation.presented_hash)
        .first()
    )
    if row is None or row.user_id != operation.user_id:
        return None
    if row.detached_at is not None and row.detached_at <= now - timedelta(seconds=operation.grace_seconds):
        return None  # expired: not removed yet, but gone for the client
    previous_channel = row.channel_name if row.detached_at is None else ""
    LiveSession.objects.filter(pk=row.pk).update(
        instance_id=process_state().identity.boot_id,
        channel_name=operation.channel_name,
        client_addr=operation.client_addr,
        detached_at=None,
        resume_token_hash=operation.new_hash,
    )
    record = SessionRecord(
        session_id=row.id, workspace_dir=row.workspace_dir, created_at=row.created_at, resumable=True
    )
    # Under the row's lock: every event up to the row's last_seq went to the previous channel
    # (and is kept), every later one goes to this one. No event falls between the two.
    replay = delivery.replay_read(session_id=row.id, base_seq=row.last_seq, last_seq=operation.last_seq)
    return record, previous_channel, replay


@dataclass(frozen=True, slots=True)
class SessionInsert:
    """A queued registry write: insert this session's row."""

    session_id: uuid.UUID
    workspace_dir: str
    created_at: datetime
    channel_name: str
    client_addr: str
    user_id: int | None
    resume_token_hash: str = ""  # empty: not resumable


@dataclass(frozen=True, slots=True)
class SessionDelete:
    """A queued registry write: delete this session's row (only while `channel_name` holds it, if given)."""

    session_id: uuid.UUID
    channel_name: str | None = None


@dataclass(frozen=True, slots=True)
class SessionResume:
    """A resume to apply on the writer's thread: move a resumable session to `channel_name`."""

    session_id: uuid.UUID
    presented_hash: str
    new_hash: str
    channel_name: str
    client_addr: str
    user_id: int | None
    grace_seconds: float
    last_seq: int | None = None  # v1.2: replay the kept events after it


def _session_row(operation: SessionInsert) -> Row:
    """The one place a session row is built: its values by attribute name (the rest are defaults)."""
    return {
        "id": operation.session_id,
        "workspace_dir": operation.workspace_dir,
        "created_at": operation.created_at,
        "channel_name": operation.channel_name,
        "client_addr": operation.client_addr,
        "instance_id": process_state().identity.boot_id,
        "user_id": operation.user_id,
        "resumable": operation.resume_token_hash != "",
        "resume_token_hash": operation.resume_token_hash,
    }


def registry_apply_sync(operations: list[SessionInsert | SessionDelete]) -> None:
    """Apply queued inserts and deletes in one transaction: the group commit, or one row alone."""
    instance_registered_run(lambda: _apply(operations))


def _apply(operations: list[SessionInsert | SessionDelete]) -> None:
    rows = [_session_row(op) for op in operations if isinstance(op, SessionInsert)]
    # Non-resumable rows never move: their deletes go in one statement. A resumable
    # session's delete applies only while its connection still holds the row.
    deleted = [op.session_id for op in operations if isinstance(op, SessionDelete) and op.channel_name is None]
    held = [op for op in operations if isinstance(op, SessionDelete) and op.channel_name is not None]
    with transaction.atomic():
        rows_insert(rows)
        rows_delete(deleted)
        for op in held:
            LiveSession.objects.filter(pk=op.session_id, channel_name=op.channel_name).delete()


registry_writer = GroupCommitWriter(apply=registry_apply_sync)
