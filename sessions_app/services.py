"""Registry operations: the only code that writes sessions and instances.

Async functions are what consumers call; each runs its queries off the event loop.
Session inserts and deletes go through one group-commit writer (registry_writer.py):
concurrent ones share a transaction, and each caller resumes after its commit.
Database failures surface as `Unavailable`, which the protocol reports without closing.
"""

import logging
import os
import secrets
import socket
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import DatabaseError, IntegrityError, transaction
from django.utils import timezone

from .conf import app_settings
from .errors import Unavailable
from .models import LiveSession, ServerInstance
from .registry_writer import GroupCommitWriter
from .tokens import token_hash

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ProcessIdentity:
    """Who this server process is: a fresh boot id at every start."""

    boot_id: uuid.UUID
    host: str
    pid: int


_identity = ProcessIdentity(boot_id=uuid.uuid4(), host=socket.gethostname(), pid=os.getpid())
_instance_registered = False
_instance_retired = False
_instance_recreated_at: datetime | None = None


def process_identity() -> ProcessIdentity:
    """This process's identity (re-made after a fork, so children never share a boot id)."""
    global _identity, _instance_registered
    if _identity.pid != os.getpid():
        _identity = ProcessIdentity(boot_id=uuid.uuid4(), host=socket.gethostname(), pid=os.getpid())
        _instance_registered = False
    return _identity


def instance_register_sync() -> uuid.UUID:
    """Insert or refresh this process's ServerInstance row; returns its boot id."""
    global _instance_registered, _instance_recreated_at
    if _instance_retired:
        # Shutting down: a late insert must fail rather than bring the instance back.
        raise DatabaseError("this server instance has shut down")
    identity = process_identity()
    now = timezone.now()
    _, created = ServerInstance.objects.update_or_create(
        id=identity.boot_id,
        defaults={"heartbeat_at": now},
        create_defaults={"host": identity.host, "pid": identity.pid, "started_at": now, "heartbeat_at": now},
    )
    if created and _instance_registered:
        # The row had been reaped while this process lived: its older sessions lost their rows.
        _instance_recreated_at = now
    _instance_registered = True
    return identity.boot_id


def session_create_sync(operation: "SessionInsert") -> None:
    """Commit one session row, registering this instance first if the registry lost it."""
    if not _instance_registered:
        instance_register_sync()
    try:
        with transaction.atomic():
            _session_row(operation).save(force_insert=True)
    except IntegrityError:
        # The instance row is gone (reaped, or the registry was reset): register again, retry once.
        instance_register_sync()
        with transaction.atomic():
            _session_row(operation).save(force_insert=True)


def _session_row(operation: "SessionInsert") -> LiveSession:
    return LiveSession(
        id=operation.session_id,
        workspace_dir=operation.workspace_dir,
        created_at=operation.created_at,
        channel_name=operation.channel_name,
        client_addr=operation.client_addr,
        instance_id=process_identity().boot_id,
        user_id=operation.user_id,
        resumable=operation.resume_token_hash != "",
        resume_token_hash=operation.resume_token_hash,
    )


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """What a consumer keeps about its session once the row is committed (or reattached)."""

    session_id: uuid.UUID
    workspace_dir: str
    created_at: datetime
    resumable: bool = False
    # Shown to the client once, in the reply; only its hash is stored.
    resume_token: str | None = field(default=None, repr=False, compare=False)
    # When the row was last attached here by a resume (None: since created_at).
    attached_at: datetime | None = None


def resume_token_new() -> tuple[str, str]:
    """A fresh resume token (256 bits from the CSPRNG) and the SHA-256 that is stored instead."""
    raw = secrets.token_urlsafe(32)
    return raw, token_hash(raw)


def resume_grace_seconds() -> float:
    """WSS_RESUME_GRACE_SECONDS: how long a detached session waits; 0 turns resume off."""
    return max(0.0, float(app_settings.WSS_RESUME_GRACE_SECONDS))


async def session_create(
    *, workspace_dir: str, channel_name: str, client_addr: str, user_id: int | None = None, resumable: bool = False
) -> SessionRecord:
    """Record a new live session; the row is committed before this returns.

    A resumable session (only when WSS_RESUME_GRACE_SECONDS is above 0) gets a resume token,
    returned in the record and stored as its hash.
    """
    token, token_digest = resume_token_new() if resumable and resume_grace_seconds() > 0 else (None, "")
    record = SessionRecord(
        session_id=uuid.uuid4(),
        workspace_dir=workspace_dir,
        created_at=timezone.now(),
        resumable=token is not None,
        resume_token=token,
    )
    try:
        await registry_writer.submit(
            SessionInsert(
                session_id=record.session_id,
                workspace_dir=record.workspace_dir,
                created_at=record.created_at,
                channel_name=channel_name,
                client_addr=client_addr,
                user_id=user_id,
                resume_token_hash=token_digest,
            )
        )
    except DatabaseError as error:
        logger.warning("registry write failed: %s", error)
        raise Unavailable("The session registry is unavailable right now; try again shortly.") from None
    return record


def session_delete_sync(session_id: uuid.UUID, *, channel_name: str | None = None) -> None:
    """Delete one session row (only while `channel_name` still holds it, when given); a missing row is fine."""
    rows = LiveSession.objects.filter(pk=session_id)
    if channel_name is not None:
        rows = rows.filter(channel_name=channel_name)
    rows.delete()


async def session_close(*, session_id: uuid.UUID, channel_name: str | None = None) -> None:
    """Remove a session from the registry. Never raises: the reaper covers a failed delete.

    With `channel_name`, only while that connection still holds it: a resumable session may
    have moved to another connection, whose row this one must not remove.
    """
    try:
        await registry_writer.submit(SessionDelete(session_id=session_id, channel_name=channel_name))
    except DatabaseError as error:
        logger.warning("registry delete of session %s failed (the reaper will remove it): %s", session_id, error)


async def session_detach(*, session_id: uuid.UUID, channel_name: str) -> bool:
    """Detach a resumable session from its ended connection: the row stays for the grace period.

    Only while `channel_name` still holds it (it may have been resumed elsewhere). Returns
    whether the row was detached; never raises (the reaper detaches what a failure left).
    """
    operation = SessionDetach(session_id=session_id, channel_name=channel_name)
    try:
        await registry_writer.submit(operation)
    except DatabaseError as error:
        logger.warning("registry detach of session %s failed (the reaper will detach it): %s", session_id, error)
        return False
    return operation.detached


@dataclass(frozen=True, slots=True)
class Resumed:
    """A session reattached to a connection, and the connection that held it until now, if any."""

    record: SessionRecord
    previous_channel: str


async def session_resume(
    *, session_id: uuid.UUID, resume_token: str, channel_name: str, client_addr: str, user_id: int | None
) -> Resumed | None:
    """Reattach a resumable session to this connection, spending its token; None when there is none.

    None covers every refusal alike (unknown id, wrong or spent token, expired, never
    resumable, another user's): the caller answers all of them with one message. A session
    still attached elsewhere moves here; `previous_channel` names the connection to tell.
    """
    if resume_grace_seconds() <= 0:
        return None
    token, token_digest = resume_token_new()
    operation = SessionResume(
        session_id=session_id,
        presented_hash=token_hash(resume_token),
        new_hash=token_digest,
        channel_name=channel_name,
        client_addr=client_addr,
        user_id=user_id,
        grace_seconds=resume_grace_seconds(),
    )
    try:
        await registry_writer.submit(operation)
    except DatabaseError as error:
        logger.warning("registry resume of session %s failed: %s", session_id, error)
        raise Unavailable("The session registry is unavailable right now; try again shortly.") from None
    if operation.result is None:
        return None
    row_record, previous_channel = operation.result
    return Resumed(
        record=SessionRecord(
            session_id=row_record.session_id,
            workspace_dir=row_record.workspace_dir,
            created_at=row_record.created_at,
            resumable=True,
            resume_token=token,
            attached_at=timezone.now(),  # after the commit, so after any re-registration it caused
        ),
        previous_channel=previous_channel,
    )


def session_resume_sync(operation: "SessionResume") -> None:
    """Apply a resume: lock the row, check token, owner and grace, move it here; sets `operation.result`."""
    operation.result = None
    if not _instance_registered:
        instance_register_sync()
    try:
        with transaction.atomic():
            _session_move(operation)
    except IntegrityError:
        # This instance's row is gone (reaped, or the registry was reset): register again, retry once.
        operation.result = None
        instance_register_sync()
        with transaction.atomic():
            _session_move(operation)


def _session_move(operation: "SessionResume") -> None:
    now = timezone.now()
    row = (
        LiveSession.objects.select_for_update()
        .filter(pk=operation.session_id, resumable=True, resume_token_hash=operation.presented_hash)
        .first()
    )
    if row is None or row.user_id != operation.user_id:
        return
    if row.detached_at is not None and row.detached_at <= now - timedelta(seconds=operation.grace_seconds):
        return  # expired: the reaper has not removed it yet, but it is gone for the client
    previous_channel = row.channel_name if row.detached_at is None else ""
    LiveSession.objects.filter(pk=row.pk).update(
        instance_id=process_identity().boot_id,
        channel_name=operation.channel_name,
        client_addr=operation.client_addr,
        detached_at=None,
        resume_token_hash=operation.new_hash,
    )
    operation.result = (
        SessionRecord(session_id=row.id, workspace_dir=row.workspace_dir, created_at=row.created_at, resumable=True),
        previous_channel,
    )


def session_detach_sync(operation: "SessionDetach") -> None:
    """Apply a detach: only a resumable row that this connection still holds; sets `operation.detached`."""
    operation.detached = bool(
        LiveSession.objects.filter(pk=operation.session_id, channel_name=operation.channel_name, resumable=True).update(
            instance=None, channel_name="", detached_at=timezone.now()
        )
    )


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


@dataclass(slots=True)
class SessionDetach:
    """A queued registry write: detach this resumable session from `channel_name`; `detached` is the outcome."""

    session_id: uuid.UUID
    channel_name: str
    detached: bool = False


@dataclass(slots=True)
class SessionResume:
    """A queued registry write: move a resumable session to `channel_name`; `result` is the outcome."""

    session_id: uuid.UUID
    presented_hash: str
    new_hash: str
    channel_name: str
    client_addr: str
    user_id: int | None
    grace_seconds: float
    result: tuple[SessionRecord, str] | None = None


RegistryWrite = SessionInsert | SessionDelete | SessionDetach | SessionResume


def registry_write_batch_sync(operations: list[RegistryWrite]) -> None:
    """Apply queued writes in one transaction: the group commit.

    Inserts (new ids) go first in one statement, and unconditional deletes (v1 sessions,
    which never move) in another; writes to resumable sessions, which can move between
    connections, are applied one by one in queue order.
    """
    process_identity()  # first: after a fork this resets the registered flag
    if not _instance_registered:
        instance_register_sync()
    rows = [_session_row(op) for op in operations if isinstance(op, SessionInsert)]
    deleted = {op.session_id for op in operations if isinstance(op, SessionDelete) and op.channel_name is None}
    ordered = [op for op in operations if not isinstance(op, SessionInsert) and op.session_id not in deleted]
    with transaction.atomic():
        if rows:
            LiveSession.objects.bulk_create(rows)
        if deleted:
            LiveSession.objects.filter(pk__in=deleted).delete()
        for operation in ordered:
            registry_write_one_sync(operation)


def registry_write_one_sync(operation: RegistryWrite) -> None:
    """Apply one queued write alone: the fallback when its batch failed."""
    if isinstance(operation, SessionInsert):
        session_create_sync(operation)
    elif isinstance(operation, SessionDelete):
        session_delete_sync(operation.session_id, channel_name=operation.channel_name)
    elif isinstance(operation, SessionDetach):
        session_detach_sync(operation)
    else:
        session_resume_sync(operation)


registry_writer = GroupCommitWriter(apply_batch=registry_write_batch_sync, apply_one=registry_write_one_sync)


async def session_terminate(*, session_id: uuid.UUID | str) -> bool:
    """End a live session wherever it lives; False when there is no such session.

    A session on a live instance is told through the channel layer: its consumer removes
    the row, sends `session_terminated` and closes with 4410. A detached session, or one
    whose instance is dead, has no consumer to tell, so its row is simply deleted.
    """
    row = await LiveSession.objects.select_related("instance").filter(pk=session_id).afirst()
    if row is None:
        return False
    if row.instance is not None and row.instance.is_alive:
        await get_channel_layer().send(row.channel_name, {"type": "session.terminate", "session_id": str(row.id)})
    else:
        await row.adelete()
    return True


def sessions_terminate_sync(session_ids) -> int:
    """Synchronous wrapper for the admin and management commands; returns how many were found."""
    return sum(async_to_sync(session_terminate)(session_id=session_id) for session_id in session_ids)


# --- Instance lifecycle: heartbeat, reaping, retirement (driven by sessions_app.lifecycle) ---


def instances_delete_sync(instance_ids, *, reason: str) -> int:
    """Delete these instances; detach their resumable sessions and, by cascade, delete the others.

    The one place where rows are reaped: a dead peer, a dead predecessor, or this process
    shutting down. Returns how many sessions were deleted (the detached ones wait for a
    resume and are counted when they expire).
    """
    instance_ids = list(instance_ids)
    if not instance_ids:
        return 0
    with transaction.atomic():
        detached = LiveSession.objects.filter(instance_id__in=instance_ids, resumable=True).update(
            instance=None, channel_name="", detached_at=timezone.now()
        )
        _, per_model = ServerInstance.objects.filter(pk__in=instance_ids).delete()
    sessions = per_model.get(LiveSession._meta.label, 0)
    logger.info(
        "removed %d session(s) and detached %d resumable one(s) of %d instance(s): %s",
        sessions,
        detached,
        len(instance_ids),
        reason,
    )
    return sessions


def sessions_expire_sync(*, grace: float | None = None) -> int:
    """Remove detached sessions whose grace (WSS_RESUME_GRACE_SECONDS) has run out; returns how many.

    Every live process runs it on each heartbeat, so a session expires within the grace
    plus one heartbeat.
    """
    seconds = resume_grace_seconds() if grace is None else grace
    cutoff = timezone.now() - timedelta(seconds=seconds)
    expired, _ = LiveSession.objects.filter(detached_at__lte=cutoff).delete()
    if expired:
        logger.info("expired %d detached session(s) after %g s", expired, seconds)
    return expired


def instance_recreated_at() -> datetime | None:
    """When this instance's row was last found reaped and registered again (None: never).

    Sessions created before then have no row any more; the lifecycle closes them.
    """
    return _instance_recreated_at


def instance_heartbeat_sync() -> bool:
    """Refresh this process's heartbeat; False when the row was gone and had to be registered again."""
    identity = process_identity()
    if ServerInstance.objects.filter(pk=identity.boot_id).update(heartbeat_at=timezone.now()):
        return True
    logger.warning("instance %s had been reaped while alive; registering it again", identity.boot_id)
    instance_register_sync()
    return False


def sessions_reap_sync(*, timeout: float | None = None) -> int:
    """Remove instances whose heartbeat is older than `timeout` seconds, and their sessions.

    Defaults to WSS_INSTANCE_TIMEOUT_SECONDS; returns how many sessions were removed.
    Rows are locked and locked rows skipped, so concurrent reapers do not collide.
    """
    seconds = app_settings.WSS_INSTANCE_TIMEOUT_SECONDS if timeout is None else timeout
    cutoff = timezone.now() - timedelta(seconds=seconds)
    with transaction.atomic():
        dead = ServerInstance.objects.select_for_update(skip_locked=True).filter(heartbeat_at__lt=cutoff)
        return instances_delete_sync(dead.values_list("pk", flat=True), reason=f"no heartbeat for {seconds:g} s")


def pid_running(pid: int) -> bool:
    """Whether a process with this pid exists in this pid namespace."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    return True


def instance_predecessors_reap_sync() -> int:
    """Remove this host's instances whose process is gone; returns how many sessions went.

    A predecessor is a row with this host name, another boot id, and a pid that no longer
    runs here or that this process now holds (a container restarted with the same pid).
    Called at start, so a restarted single process cleans up after its own crash at once.
    """
    identity = process_identity()
    candidates = ServerInstance.objects.filter(host=identity.host).exclude(pk=identity.boot_id)
    dead = [pk for pk, pid in candidates.values_list("pk", "pid") if pid == identity.pid or not pid_running(pid)]
    return instances_delete_sync(dead, reason=f"predecessor(s) on {identity.host} no longer running")


def instance_retire_sync() -> int:
    """Remove this process's instance and every session of it, for good; returns the sessions removed."""
    global _instance_retired
    _instance_retired = True
    return instances_delete_sync([process_identity().boot_id], reason="this server is shutting down")
