"""Sessions opened and ended per minute: counted in memory, written to the registry on the heartbeat.

Each process counts its own sessions (and the ones it expires, reaps or removes) per
minute, and each heartbeat upserts this instance's unfinished minutes: one statement per
heartbeat, none per session. A crash loses what was counted since the last heartbeat.
"""

import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.db.models import Sum

from .models import ActivityMinute, ServerInstance
from .process import process_state

HOUR = 60
# Minutes kept in memory while the registry is down; older ones are dropped, not written.
KEPT_MINUTES = 2 * HOUR
PRUNE_AFTER = timedelta(hours=2)
PRUNE_EVERY_SECONDS = 600.0


def epoch_minute(now: float | None = None) -> int:
    """The minute `now` (time.time(), default the current time) falls in, as minutes since the epoch."""
    return int((time.time() if now is None else now) // 60)


def sessions_counted(*, opened: int = 0, ended: int = 0) -> None:
    """Count sessions opened and ended by this process in the current minute (the event loop calls this)."""
    counts = process_state().activity.by_minute.setdefault(epoch_minute(), [0, 0])
    counts[0] += opened
    counts[1] += ended


def counts_snapshot() -> dict[int, tuple[int, int]]:
    """The counts to write now: every unwritten minute, and the current one even when empty."""
    counts = process_state().activity.by_minute
    current = epoch_minute()
    counts.setdefault(current, [0, 0])
    for minute in [m for m in counts if m < current - KEPT_MINUTES]:
        del counts[minute]
    return {minute: (opened, ended) for minute, (opened, ended) in counts.items()}


def counts_written(snapshot: dict[int, tuple[int, int]]) -> None:
    """Forget finished minutes the registry now holds, unless they were counted again meanwhile."""
    counts = process_state().activity.by_minute
    current = epoch_minute()
    for minute, written in snapshot.items():
        if minute < current and tuple(counts.get(minute, ())) == written:
            del counts[minute]


def minutes_write_sync(snapshot: dict[int, tuple[int, int]], *, stopped: bool = False) -> None:
    """Upsert this instance's minutes (absolute counts: only this process writes its rows)."""
    state = process_state()
    identity = state.identity
    rows = [
        ActivityMinute(
            instance_id=identity.boot_id,
            host=identity.host,
            pid=identity.pid,
            minute=datetime.fromtimestamp(minute * 60, UTC),
            opened=opened,
            ended=ended,
            stopped=stopped,
        )
        for minute, (opened, ended) in snapshot.items()
    ]
    ActivityMinute.objects.bulk_create(
        rows,
        update_conflicts=True,
        unique_fields=["instance_id", "minute"],
        update_fields=["opened", "ended", "stopped"],
    )
    if time.monotonic() - state.activity.pruned_at > PRUNE_EVERY_SECONDS:
        state.activity.pruned_at = time.monotonic()
        ActivityMinute.objects.filter(minute__lt=datetime.now(UTC) - PRUNE_AFTER).delete()


@dataclass(frozen=True, slots=True)
class History:
    """The last hour across every instance: one value per minute, oldest first."""

    minutes: list[datetime]
    opened: list[int]
    ended: list[int]


def history_sync(*, minutes: int = HOUR) -> History:
    """Sessions opened and ended per minute over the last `minutes`, summed over every instance."""
    current = epoch_minute()
    first = current - minutes + 1
    starts = [datetime.fromtimestamp((first + n) * 60, UTC) for n in range(minutes)]
    totals = (
        ActivityMinute.objects.filter(minute__gte=starts[0])
        .values("minute")
        .annotate(opened=Sum("opened"), ended=Sum("ended"))
    )
    by_minute = {row["minute"]: (row["opened"], row["ended"]) for row in totals}
    return History(
        minutes=starts,
        opened=[by_minute.get(start, (0, 0))[0] for start in starts],
        ended=[by_minute.get(start, (0, 0))[1] for start in starts],
    )


@dataclass(frozen=True, slots=True)
class GoneInstance:
    """An instance that counted in the last hour and is registered no more."""

    id: uuid.UUID
    host: str
    pid: int
    last_seen: datetime
    reaped: bool  # False: it stopped itself


def instances_gone_sync(*, minutes: int = HOUR) -> list[GoneInstance]:
    """Instances seen in the last `minutes` that are gone: stopped cleanly, or reaped after dying."""
    since = datetime.fromtimestamp((epoch_minute() - minutes + 1) * 60, UTC)
    registered = ServerInstance.objects.values("id")
    rows = (
        ActivityMinute.objects.filter(minute__gte=since)
        .exclude(instance_id__in=registered)
        .order_by("instance_id", "-minute")
    )
    gone: dict[uuid.UUID, GoneInstance] = {}
    for row in rows:
        if row.instance_id not in gone:  # the newest row of each: did its own stop write it?
            gone[row.instance_id] = GoneInstance(
                id=row.instance_id, host=row.host, pid=row.pid, last_seen=row.minute, reaped=not row.stopped
            )
    return sorted(gone.values(), key=lambda instance: instance.last_seen, reverse=True)
