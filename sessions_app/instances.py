"""Server instance rows: registration, heartbeat, reaping dead instances, expiry, retirement, pid probing.

The sync functions here run on a database thread (the registry writer's or the
lifecycle's), never on the event loop. `instances_delete_sync` is the one place where an
instance's rows are reaped.
"""

import logging
import os
import uuid
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import TypeVar

from django.db import DatabaseError, IntegrityError, transaction
from django.utils import timezone

from .conf import app_settings
from .models import LiveSession, ServerInstance
from .process import Registration, process_state

logger = logging.getLogger(__name__)

T = TypeVar("T")


def resume_grace_seconds() -> float:
    """WSS_RESUME_GRACE_SECONDS: how long a detached session waits; 0 turns resume off."""
    return max(0.0, float(app_settings.WSS_RESUME_GRACE_SECONDS))


def instance_register_sync() -> uuid.UUID:
    """Insert or refresh this process's ServerInstance row; returns its boot id."""
    state = process_state()
    if state.registration is Registration.RETIRED:
        # Shutting down: a late insert must fail rather than bring the instance back.
        raise DatabaseError("this server instance has shut down")
    identity = state.identity
    now = timezone.now()
    ServerInstance.objects.update_or_create(
        id=identity.boot_id,
        defaults={"heartbeat_at": now},
        create_defaults={"host": identity.host, "pid": identity.pid, "started_at": now, "heartbeat_at": now},
    )
    state.registration_set(Registration.REGISTERED)
    return identity.boot_id


def instance_registered_run(function: Callable[[], T]) -> T:
    """Run a write that needs this instance's row: register first if need be, and again if the row went.

    If the row is gone (reaped, or the registry was reset), the write's foreign keys fail:
    register again and run it once more.
    """
    state = process_state()
    if state.registration is not Registration.REGISTERED:
        instance_register_sync()
    try:
        return function()
    except IntegrityError:
        if ServerInstance.objects.filter(pk=state.identity.boot_id).exists():
            raise  # the write's own fault
        instance_register_sync()
        return function()


def instance_heartbeat_sync() -> bool:
    """Refresh this process's heartbeat; False when the row was gone and had to be registered again."""
    identity = process_state().identity
    if ServerInstance.objects.filter(pk=identity.boot_id).update(heartbeat_at=timezone.now()):
        return True
    logger.warning("instance %s had been reaped while alive; registering it again", identity.boot_id)
    instance_register_sync()
    return False


def instances_delete_sync(instance_ids: Iterable, *, reason: str) -> int:
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
    identity = process_state().identity
    candidates = ServerInstance.objects.filter(host=identity.host).exclude(pk=identity.boot_id)
    dead = [pk for pk, pid in candidates.values_list("pk", "pid") if pid == identity.pid or not pid_running(pid)]
    return instances_delete_sync(dead, reason=f"predecessor(s) on {identity.host} no longer running")


def instance_retire_sync() -> int:
    """Remove this process's instance and every session of it, for good; returns the sessions removed."""
    state = process_state()
    state.registration_set(Registration.RETIRED)
    return instances_delete_sync([state.identity.boot_id], reason="this server is shutting down")
