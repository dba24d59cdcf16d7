"""Database threads: a lifecycle call stuck in the database gives up its thread, so the next heartbeat runs."""

import pytest

from sessions_app import heartbeat
from sessions_app.models import ServerInstance
from sessions_app.process import process_state

from .locks import instance_locked
from .polling import wait_until
from .servers import dead_pid

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("fresh_process")]


@pytest.mark.production
async def test_a_lifecycle_call_stuck_in_the_database_does_not_hold_up_the_next_heartbeat(
    production_services, settings
):
    settings.WSS_HEARTBEAT_SECONDS = 0.1
    settings.WSS_REGISTRY_TIMEOUT_SECONDS = 0.3
    # A dead predecessor whose row another transaction holds: reaping it hangs (up to the 2 s lock timeout).
    predecessor = await ServerInstance.objects.acreate(host=process_state().identity.host, pid=dead_pid())
    boot_id = process_state().identity.boot_id
    beats: set = set()

    async def three_beats() -> bool:
        beats.add(await ServerInstance.objects.filter(pk=boot_id).values_list("heartbeat_at", flat=True).afirst())
        return len(beats - {None}) >= 3

    async with instance_locked(predecessor.pk):
        await heartbeat.start()  # registers, then gets stuck reaping the predecessor
        # Each heartbeat runs on a fresh thread instead of queueing behind the stuck call.
        await wait_until(three_beats, 1.5, what="heartbeats while a lifecycle call is stuck")
