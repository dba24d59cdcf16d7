"""A flooding client cannot make a real server hold more than the documented bound.

The registry is held locked, so the consumer waits in `new_session` (as on a slow
database) while the client floods; the server's RSS is sampled throughout. Before the
inbox (sessions_app/inbox.py), daphne held the whole flood and uvicorn more than that
(docs/security.md has the figures and `python -m bench.flood`, which measured them).
"""

import asyncio
import contextlib
import json
import sqlite3

import psutil
import pytest
import websockets
from django.db import connection

from bench.flood import MIB, RssSampler, flood

pytestmark = pytest.mark.live

# The documented bound on what one flooding connection makes the server grow by (docs/security.md).
RSS_GROWTH_BOUND_MIB = 16


@contextlib.contextmanager
def registry_locked():
    """Hold the session table's write lock from outside the server, on either registry."""
    params = connection.settings_dict
    if connection.vendor == "sqlite":
        holder = sqlite3.connect(params["NAME"], isolation_level=None, timeout=5)
        holder.execute("BEGIN IMMEDIATE")
    else:
        import psycopg

        holder = psycopg.connect(
            host=params.get("HOST") or "127.0.0.1",
            port=params.get("PORT") or 5432,
            user=params.get("USER") or "postgres",
            dbname=params["NAME"],
        )
        holder.execute("LOCK TABLE sessions_app_livesession IN EXCLUSIVE MODE")
    try:
        yield
    finally:
        holder.rollback()
        holder.close()


@pytest.mark.parametrize("server_name", ["daphne", "uvicorn"])
@pytest.mark.parametrize(
    ("frames", "size", "env", "close_code"),
    [
        (100, 512 * 1024, {}, 4413),  # frames over WSS_MAX_MESSAGE_BYTES, under daphne's 1 MiB
        (300, 60_000, {"WSS_RATE_LIMIT": "0"}, 4429),  # frames under the limit, rate limit off: the backlog bound
    ],
    ids=["large-frames", "small-frames-no-rate-limit"],
)
async def test_a_flooding_client_cannot_grow_the_server_past_the_bound(
    server_factory, tmp_path, server_name, frames, size, env, close_code
):
    server = server_factory(server=server_name, env={"WSS_LOG_LEVEL": "WARNING", **env})
    async with websockets.connect(server.url) as warm:  # one session first: every code path loaded
        await warm.send(json.dumps({"type": "new_session", "workspace_dir": str(tmp_path)}))
        await warm.recv()
    await asyncio.sleep(0.3)
    baseline = psutil.Process(server.process.pid).memory_info().rss
    sampler = RssSampler(server.process.pid)
    sampler.start()
    with registry_locked():
        task = asyncio.ensure_future(flood(server.url, frames=frames, size=size, workspace=str(tmp_path)))
        await asyncio.sleep(3)  # the whole flood is sent (or refused) while the consumer waits
    result = await asyncio.wait_for(task, 30)
    sampler.running = False
    sampler.join()
    growth = (sampler.peak - baseline) / MIB
    assert result["sent"] >= 1
    assert result["close_code"] == close_code
    assert growth < RSS_GROWTH_BOUND_MIB, f"{server_name} grew by {growth:.1f} MiB for {frames * size / MIB:.0f} MiB"
