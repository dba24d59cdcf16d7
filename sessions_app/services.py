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
import socket
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from channels.exceptions import ChannelFull
from channels.layers import get_channel_layer
from django.db import DatabaseError, IntegrityError, transaction
from django.utils import timezone

from . import metrics
from .conf import app_settings
from .errors import Unavailable
from .layers import LAYER_FAILURES
from .models import LiveSession, ServerInstance
from .registry_writer import GroupCommitWriter

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
    """What a consumer keeps about its session once the row is committed."""

    session_id: uuid.UUID
    workspace_dir: str
    created_at: datetime


def registry_timeout() -> float:
    """How long a caller waits for the registry before answering `unavailable`."""
    return app_settings.WSS_REGISTRY_TIMEOUT_SECONDS


async def session_create(
    *, workspace_dir: str, channel_name: str, client_addr: str, user_id: int | None = None
) -> SessionRecord:
    """Record a new live session; the row is committed before this returns.

    Waits at most WSS_REGISTRY_TIMEOUT_SECONDS. A caller that gives up (timed out, or
    cancelled because its client left) leaves no row: the insert is withdrawn if the
    writer had not started it, and deleted if it committed anyway.
    """
    if instance_fenced():
        raise Unavailable("This server cannot reach the session registry right now; try again shortly.")
    record = SessionRecord(session_id=uuid.uuid4(), workspace_dir=workspace_dir, created_at=timezone.now())
    insert = SessionInsert(
        session_id=record.session_id,
        workspace_dir=record.workspace_dir,
        created_at=record.created_at,
        channel_name=channel_name,
        # A forwarded-for header can make it anything: keep what fits, rather than fail the row.
        client_addr=client_addr[:CLIENT_ADDR_MAX],
        user_id=user_id,
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


async def session_close(*, session_id: uuid.UUID) -> None:
    """Remove a session from the registry. Never raises: reconciliation removes a row left behind."""
    try:
        await asyncio.wait_for(registry_writer.submit(SessionDelete(session_id=session_id)), registry_timeout())
    except Exception as error:
        logger.warning(
            "registry delete of session %s failed (reconciliation will remove it): %s",
            session_id,
            str(error) or type(error).__name__,
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


@dataclass(frozen=True, slots=True)
class SessionDelete:
    """A queued registry write: delete this session's row."""

    session_id: uuid.UUID


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
    deleted = [op.session_id for op in operations if isinstance(op, SessionDelete)]
    with transaction.atomic():
        if rows:
            LiveSession.objects.bulk_create(rows)
        if deleted:
            LiveSession.objects.filter(pk__in=deleted).delete()


registry_writer = GroupCommitWriter(apply=registry_apply_sync)


@dataclass(frozen=True, slots=True)
class Reconciliation:
    """What a reconciliation did: orphan rows removed, and held sessions found without a row."""

    removed: int
    lost: frozenset[uuid.UUID]


def sessions_reconcile_sync(*, held: frozenset[uuid.UUID], in_flight: frozenset[uuid.UUID]) -> Reconciliation:
    """Make this instance's rows equal the sessions it holds (run on the writer's thread).

    Rows no connection holds and no insert in flight explains are deleted. Held sessions
    without a row are reported, not recorded again: the registry's authority (a reaper, an
    operator) removed them, and writing them back could revive a session it ended.
    """
    boot_id = process_identity().boot_id
    with transaction.atomic():
        rows = set(LiveSession.objects.filter(instance_id=boot_id).values_list("pk", flat=True))
        orphans = rows - held - in_flight
        if orphans:
            LiveSession.objects.filter(instance_id=boot_id, pk__in=orphans).delete()
    return Reconciliation(removed=len(orphans), lost=frozenset(held - rows))


async def sessions_reconcile(*, held: frozenset[uuid.UUID]) -> Reconciliation:
    """Reconcile this instance's rows with `held`, the sessions its connections hold right now.

    Queued on the registry writer behind every write submitted so far, in the same step
    as the snapshot of inserts in flight, so no write can slip between the two.
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
    `not_delivered`. A session whose instance is dead has no consumer to tell, so its row
    is simply deleted.
    """
    row = await LiveSession.objects.select_related("instance").filter(pk=session_id).afirst()
    if row is None:
        return TerminateResult.NOT_FOUND
    if not row.instance.is_alive:
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
    """Delete these instances and, by cascade, their sessions; returns how many sessions went.

    The one place where rows are reaped: a dead peer, a dead predecessor, or this process
    shutting down.
    """
    instance_ids = list(instance_ids)
    if not instance_ids:
        return 0
    _, per_model = ServerInstance.objects.filter(pk__in=instance_ids).delete()
    sessions = per_model.get(LiveSession._meta.label, 0)
    logger.info("removed %d session(s) of %d instance(s): %s", sessions, len(instance_ids), reason)
    return sessions


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
