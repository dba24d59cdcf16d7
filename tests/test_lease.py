"""The lease: a process that cannot heartbeat closes its sessions with session_lost before peers may reap them."""

import asyncio
import time

import pytest

from sessions_app import heartbeat, lease, sessions
from sessions_app.process import process_state

from .communicators import connect, detached_session, expect_session_lost, open_session, resume
from .locks import instance_locked
from .polling import wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("fresh_process")]


async def test_a_process_that_cannot_heartbeat_closes_its_sessions_before_peers_may_reap_them(settings, workspace):
    settings.WSS_HEARTBEAT_SECONDS = 0.1
    settings.WSS_INSTANCE_TIMEOUT_SECONDS = 1.0  # lease: 0.9 s after the last good heartbeat
    settings.WSS_REGISTRY_TIMEOUT_SECONDS = 0.3
    await heartbeat.start()
    held, _ = await open_session(workspace, ok=True)
    async with instance_locked(process_state().identity.boot_id):
        blocked_at = time.monotonic()
        fenced_after = await expect_session_lost(held) - blocked_at
        # Until a heartbeat succeeds again, no new session: peers may reap this instance any moment.
        refused, reply = await open_session(workspace)
        assert reply["code"] == "unavailable"
        await refused.disconnect()
    assert fenced_after < settings.WSS_INSTANCE_TIMEOUT_SECONDS

    async def accepted_again() -> bool:
        comm, reply = await open_session(workspace)
        await comm.disconnect()
        return reply["type"] == "new_session"

    await wait_until(accepted_again, 10, what="sessions accepted after the heartbeat recovered")


async def test_a_lease_timer_that_fires_early_still_fences_once_the_lease_has_run_out(settings, workspace, monkeypatch):
    """uvloop reads its clock once per loop iteration: a timer set late in one fires early."""
    held, _ = await open_session(workspace, ok=True)
    loop = asyncio.get_running_loop()
    lease_seconds = settings.WSS_INSTANCE_TIMEOUT_SECONDS - settings.WSS_HEARTBEAT_SECONDS
    with monkeypatch.context() as patched:
        patched.setattr(loop, "time", lambda: time.monotonic() - 0.3)  # the loop's clock, read 0.3 s ago
        lease.lease_renew(time.monotonic() - lease_seconds + 0.5)  # the lease ends in 0.5 s
    ends = process_state().lease_until
    arrived = await expect_session_lost(held, timeout=3)
    assert ends <= arrived < ends + 1


async def test_a_resume_that_outlived_the_lease_is_answered_then_closed_with_session_lost(workspace):
    reply = await detached_session(workspace)
    comm = await connect()
    process_state().lease_renew(time.monotonic() + 0.2)  # the lease ends while the writer is busy
    busy = sessions.registry_writer.call(lambda: time.sleep(0.5))
    frame = await resume(comm, reply["session_id"], reply["resume_token"])
    await busy
    assert frame["type"] == "session_resumed"  # the client has its new token...
    lost = await comm.receive_json_from(timeout=5)  # ...and is sent to resume elsewhere
    assert lost["code"] == "session_lost"
    assert await comm.receive_output(timeout=5) == {"type": "websocket.close", "code": 4503}
    await comm.disconnect(code=4503)
