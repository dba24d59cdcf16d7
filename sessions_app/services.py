"""Registry operations: the only code that writes sessions and instances.

Async functions are what consumers call; each runs its queries off the event loop.
Session inserts and deletes go through one group-commit writer (registry_writer.py):
concurrent ones share a transaction, and each caller resumes after its commit. Every wait
on the registry is bounded by WSS_REGISTRY_TIMEOUT_SECONDS. Database failures surface as
`Unavailable`, which the protocol reports without closing; a failed delete is left to
reconciliation (`sessions_reconcile`), which makes this instance's rows equal the sessions
its connections hold.
"""

import asyncio
import logging
import os
import secrets
import socket
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum

from channels.exceptions import ChannelFull
from channels.layers import get_channel_layer
from django.db import DatabaseError, IntegrityError, transaction
from django.utils import timezone

from . import delivery, metrics
from .conf import app_settings
from .errors import Unavailable
from .layers import LAYER_FAILURES
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
# Until when (time.monotonic()) this instance may hold sessions: its last good heartbeat plus
# the instance timeout minus one heartbeat. None while no heartbeat runs (tests, a bare ASGI app).
_lease_until: float | None = None
# Sessions whose insert was submitted and whose caller has not yet got the answer: the
# reconciler must not take their committed rows for orphans.
_inserts_in_flight: set[uuid.UUID] = set()

CLIENT_ADDR_MAX = LiveSession._meta.get_field("client_addr").max_length


def process_identity() -> ProcessIdentity:
    """This process's identity (re-made after a fork, so children never share a boot id)."""
    global _identity, _instance_registered
    if _identity.pid != os.getpid():
        _identity = ProcessIdentity(boot_id=uuid.uuid4(), host=socket.gethostname(), pid=os.getpid())
        _instance_registered = False
    return _identity


def process_reset() -> None:
    """Forget this process's registration: a fresh boot id, neither registered nor retired.

    For tests only, which play several server lives in one process; a server never calls it.
    """
    global _identity, _instance_registered, _instance_retired, _lease_until
    _identity = ProcessIdentity(boot_id=uuid.uuid4(), host=socket.gethostname(), pid=os.getpid())
    _instance_registered = _instance_retired = False
    _lease_until = None
    _inserts_in_flight.clear()


def instance_register_sync() -> uuid.UUID:
    """Insert or refresh this process's ServerInstance row; returns its boot id."""
    global _instance_registered
    if _instance_retired:
        # Shutting down: a late insert must fail rather than bring the instance back.
        raise DatabaseError("this server instance has shut down")
    identity = process_identity()
    now = timezone.now()
    ServerInstance.objects.update_or_create(
        id=identity.boot_id,
        defaults={"heartbeat_at": now},
        create_defaults={"host": identity.host, "pid": identity.pid, "started_at": now, "heartbeat_at": now},
    )
    _instance_registered = True
    return identity.boot_id


def instance_lease_renew(until: float | None) -> None:
    """Set until when (a time.monotonic() value) this instance may hold sessions; None: no lease kept."""
    global _lease_until
    _lease_until = until if until is None or _lease_until is None else max(until, _lease_until)


def instance_lease_expire() -> None:
    """End the lease now: new sessions are refused until a heartbeat renews it."""
    global _lease_until
    _lease_until = time.monotonic()


def instance_fenced() -> bool:
    """Whether this instance's lease ran out: peers may reap it any moment, so it holds no sessions."""
    return _lease_until is not None and time.monotonic() >= _lease_until


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


def resume_grace_seconds() -> float:
    """WSS_RESUME_GRACE_SECONDS: how long a detached session waits; 0 turns resume off."""
    return max(0.0, float(app_settings.WSS_RESUME_GRACE_SECONDS))


def registry_timeout() -> float:
    """How long a caller waits for the registry before answering `unavailable`."""
    return app_settings.WSS_REGISTRY_TIMEOUT_SECONDS


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
    if instance_fenced():
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
    _inserts_in_flight.add(record.session_id)
    try:
        await asyncio.wait_for(
            registry_writer.submit(insert, undo=SessionDelete(session_id=record.session_id)), registry_timeout()
        )
    except (DatabaseError, TimeoutError) as error:
        logger.warning("registry write failed: %s", str(error) or "timed out")
        raise Unavailable("The session registry is unavailable right now; try again shortly.") from None
    finally:
        _inserts_in_flight.discard(record.session_id)
    if instance_fenced():
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
    if instance_fenced():
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
    _inserts_in_flight.add(session_id)
    try:
        result = await asyncio.wait_for(
            registry_writer.call(lambda: session_resume_sync(operation)), registry_timeout()
        )
    except (DatabaseError, TimeoutError) as error:
        logger.warning("registry resume of session %s failed: %s", session_id, str(error) or "timed out")
        raise Unavailable("The session registry is unavailable right now; try again shortly.") from None
    finally:
        _inserts_in_flight.discard(session_id)
    if result is None:
        return None
    record, previous_channel, replay = result
    return Resumed(record=replace(record, resume_token=token), previous_channel=previous_channel, replay=replay)


def session_resume_sync(operation: "SessionResume") -> tuple[SessionRecord, str, delivery.Replay] | None:
    """Apply a resume: lock the row, check token, owner and grace, move it here.

    Returns the session, the channel that held it (empty if detached) and its replay, or None.
    """
    process_identity()  # first: after a fork this resets the registered flag
    if not _instance_registered:
        instance_register_sync()
    try:
        with transaction.atomic():
            return _session_move(operation)
    except IntegrityError:
        if ServerInstance.objects.filter(pk=process_identity().boot_id).exists():
            raise
        # This instance's row is gone (reaped, or the registry was reset): register again, retry once.
        instance_register_sync()
        with transaction.atomic():
            return _session_move(operation)


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
        instance_id=process_identity().boot_id,
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


def _session_row(operation: SessionInsert) -> LiveSession:
    """The one place a session row is built."""
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


def registry_apply_sync(operations: list[SessionInsert | SessionDelete]) -> None:
    """Apply queued inserts and deletes in one transaction: the group commit, or one row alone.

    If this instance's row is gone (reaped, or the registry was reset), the inserts'
    foreign keys fail: register again and apply once more.
    """
    process_identity()  # first: after a fork this resets the registered flag
    if not _instance_registered:
        instance_register_sync()
    try:
        _apply(operations)
    except IntegrityError:
        if ServerInstance.objects.filter(pk=process_identity().boot_id).exists():
            raise  # the row's own fault
        instance_register_sync()
        _apply(operations)


def _apply(operations: list[SessionInsert | SessionDelete]) -> None:
    rows = [_session_row(op) for op in operations if isinstance(op, SessionInsert)]
    # v1 rows never move: their deletes go in one statement. A resumable session's delete
    # applies only while its connection still holds the row.
    deleted = [op.session_id for op in operations if isinstance(op, SessionDelete) and op.channel_name is None]
    held = [op for op in operations if isinstance(op, SessionDelete) and op.channel_name is not None]
    with transaction.atomic():
        if rows:
            LiveSession.objects.bulk_create(rows)
        if deleted:
            LiveSession.objects.filter(pk__in=deleted).delete()
        for op in held:
            LiveSession.objects.filter(pk=op.session_id, channel_name=op.channel_name).delete()


registry_writer = GroupCommitWriter(apply=registry_apply_sync)


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
    connection holds and no write in flight explains are orphans: a v1 one is deleted, a
    resumable one detached (its connection ended and the detach did not get through).
    Detached rows belong to no instance, so they are never orphans here. Held sessions
    without a row are reported, not recorded again: the registry's authority (a reaper, an
    operator) removed them, and writing them back could revive a session it ended. Held
    sessions whose row is attached to another connection were resumed there: `moved`.
    """
    boot_id = process_identity().boot_id
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
    in_flight = frozenset(_inserts_in_flight)
    future = registry_writer.call(lambda: sessions_reconcile_sync(held=held, in_flight=in_flight))
    return await asyncio.wait_for(future, registry_timeout())


class TerminateResult(StrEnum):
    """What a terminate achieved: only `delivered` and `removed` ended something."""

    DELIVERED = "delivered"  # the channel layer took the message for the consumer that holds the session
    REMOVED = "removed"  # the session's instance is dead: its row was deleted
    NOT_DELIVERED = "not_delivered"  # the channel layer failed: nothing was done, try again
    NOT_FOUND = "not_found"  # no such live session


# How long a terminate waits for the channel layer to take its message: an operator's
# request must not hang on a stalled Redis (the layer's own socket timeout is 15 s).
TERMINATE_SEND_TIMEOUT_SECONDS = 5.0


async def session_terminate(*, session_id: uuid.UUID | str) -> TerminateResult:
    """End a live session wherever it lives, and say what happened.

    A session on a live instance is told through the channel layer: its consumer removes
    the row, sends `session_terminated` and closes with 4410. The core Redis layer keeps
    the message until that consumer reads it, so a consumer cut off from Redis gets it when
    Redis is back. When the layer does not take the message, nothing was done:
    `not_delivered`. A detached session, or one whose instance is dead, has no consumer to
    tell, so its row is simply deleted.
    """
    row = await LiveSession.objects.select_related("instance").filter(pk=session_id).afirst()
    if row is None:
        return TerminateResult.NOT_FOUND
    if row.instance is None or not row.instance.is_alive:
        await row.adelete()
        return TerminateResult.REMOVED
    message = {"type": "session.terminate", "session_id": str(row.id)}
    try:
        async with asyncio.timeout(TERMINATE_SEND_TIMEOUT_SECONDS):
            await get_channel_layer().send(row.channel_name, message)
    except (*LAYER_FAILURES, TimeoutError, ChannelFull) as error:
        if isinstance(error, TimeoutError):
            metrics.channel_layer_failed("send")  # Redis stalled; the layer counts the failures it sees
        logger.warning("terminate of session %s not delivered: the channel layer failed (%r)", row.id, error)
        return TerminateResult.NOT_DELIVERED
    return TerminateResult.DELIVERED


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
