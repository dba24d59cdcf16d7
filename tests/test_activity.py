"""Sessions opened and ended per minute: counted by each process, written on its heartbeat, summed for the index."""

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone

from sessions_app import activity, heartbeat
from sessions_app.models import ActivityMinute, LiveSession, ServerInstance
from sessions_app.process import process_state

from .communicators import detached_session, open_session

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def no_counts_yet(fresh_process):
    """A process that has counted nothing yet."""


def this_instance_rows() -> list[ActivityMinute]:
    return list(ActivityMinute.objects.filter(instance_id=process_state().identity.boot_id).order_by("minute"))


async def this_instance_totals() -> tuple[int, int, bool]:
    """This process's opened and ended counts, summed over its rows, and whether its newest row says stopped.

    A test may cross a minute boundary, so its counts may span two rows.
    """
    rows = [
        row
        async for row in ActivityMinute.objects.filter(instance_id=process_state().identity.boot_id).order_by("minute")
    ]
    return sum(row.opened for row in rows), sum(row.ended for row in rows), rows[-1].stopped


def test_counts_are_written_as_one_row_per_minute_and_rewritten_whole(monkeypatch):
    now = activity.time.time()
    monkeypatch.setattr(activity.time, "time", lambda: now)  # one minute throughout, wherever the clock stands
    activity.sessions_counted(opened=3)
    activity.sessions_counted(ended=1)
    snapshot = activity.counts_snapshot()
    activity.minutes_write_sync(snapshot)
    activity.counts_written(snapshot)
    activity.sessions_counted(opened=2)  # later in the same minute: the row is rewritten, not added to
    snapshot = activity.counts_snapshot()
    activity.minutes_write_sync(snapshot)
    (row,) = this_instance_rows()
    assert (row.opened, row.ended, row.stopped) == (5, 1, False)
    assert row.minute == datetime.fromtimestamp(activity.epoch_minute() * 60, UTC)
    assert (row.host, row.pid) == (process_state().identity.host, process_state().identity.pid)


def test_a_finished_minute_is_forgotten_once_written_and_kept_while_the_registry_is_down(monkeypatch):
    now = 1_800_000_000.0
    monkeypatch.setattr(activity.time, "time", lambda: now)
    activity.sessions_counted(opened=1)
    snapshot = activity.counts_snapshot()
    now += 60  # the next minute: the first one is finished
    activity.counts_written({})  # a failed write forgets nothing
    assert activity.epoch_minute(now - 60) in activity.counts_snapshot()
    activity.counts_written(snapshot)
    assert activity.epoch_minute(now - 60) not in activity.counts_snapshot()


def test_the_history_sums_every_instance_per_minute_over_the_last_hour():
    minute = datetime.fromtimestamp(activity.epoch_minute() * 60, UTC)
    for opened, ended in ((2, 1), (3, 0)):
        ActivityMinute.objects.create(
            instance_id=uuid.uuid4(), host="h", pid=1, minute=minute, opened=opened, ended=ended
        )
    ActivityMinute.objects.create(
        instance_id=uuid.uuid4(), host="h", pid=1, minute=minute - timedelta(minutes=61), opened=100
    )  # more than an hour ago
    history = activity.history_sync()
    assert len(history.minutes) == len(history.opened) == 60
    assert history.minutes[-1] == minute
    assert (history.opened[-1], history.ended[-1]) == (5, 1)
    assert sum(history.opened) == 5


def test_instances_gone_in_the_last_hour_are_told_apart_stopped_or_reaped():
    minute = datetime.fromtimestamp(activity.epoch_minute() * 60, UTC)
    running = ServerInstance.objects.create(host="running", pid=1)
    stopped, reaped = uuid.uuid4(), uuid.uuid4()
    for instance_id, host, was_stopped in (
        (running.pk, "running", False),
        (stopped, "stopped", True),
        (reaped, "reaped", False),
    ):
        ActivityMinute.objects.create(instance_id=instance_id, host=host, pid=2, minute=minute, stopped=was_stopped)
    gone = {instance.host: instance.reaped for instance in activity.instances_gone_sync()}
    assert gone == {"stopped": False, "reaped": True}


@pytest.mark.usefixtures("fresh_process")
async def test_the_heartbeat_writes_what_this_process_opened_and_ended_and_the_stop_marks_it_stopped(workspace):
    comm, _ = await open_session(workspace, ok=True)
    await comm.disconnect()
    await detached_session(workspace)  # a detach is no end
    await heartbeat.heartbeat()
    assert await this_instance_totals() == (2, 1, False)
    await heartbeat.stop()
    assert await this_instance_totals() == (2, 1, True)


@pytest.mark.usefixtures("fresh_process")
async def test_expired_and_reaped_sessions_count_as_ended(workspace):
    reply = await detached_session(workspace)
    await LiveSession.objects.filter(pk=reply["session_id"]).aupdate(detached_at=timezone.now() - timedelta(hours=1))
    dead = await ServerInstance.objects.acreate(host="dead", pid=1, heartbeat_at=timezone.now() - timedelta(hours=1))
    await LiveSession.objects.acreate(workspace_dir="/tmp", channel_name="c", instance=dead)
    process_state().beats_good_since = float("-inf")  # its heartbeats have held for long enough: it may reap
    await heartbeat.heartbeat()
    assert (await this_instance_totals())[:2] == (1, 2)  # one expired, one reaped
