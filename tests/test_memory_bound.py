"""A flooding client cannot make a real server hold more than the documented bound.

The registry is held locked, so the consumer waits in `new_session` (as on a slow
database) while the client floods; the server's RSS is sampled throughout. Before the
inbox (sessions_app/inbox.py), daphne held the whole flood and uvicorn more than that
(docs/security.md has the figures and `python -m bench.flood`, which measured them).
"""

import asyncio
import json

import psutil
import pytest
import websockets

from bench.flood import MIB, RssSampler, flood

from .locks import sessions_table_locked

# The bound is the inbox's and the server's, the same whatever registry and layer.
pytestmark = [pytest.mark.live, pytest.mark.path_independent]

# The documented bound on what one flooding connection makes the server grow by (docs/security.md).
RSS_GROWTH_BOUND_MIB = 16


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
    baseline = psutil.Process(server.serving_pid).memory_info().rss
    sampler = RssSampler(server.serving_pid)
    sampler.start()
    with sessions_table_locked():
        task = asyncio.ensure_future(flood(server.url, frames=frames, size=size, workspace=str(tmp_path)))
        await asyncio.sleep(3)  # the whole flood is sent (or refused) while the consumer waits
    result = await asyncio.wait_for(task, 30)
    sampler.running = False
    sampler.join()
    growth = (sampler.peak - baseline) / MIB

    def seen() -> str:  # called by a failing assert only: it reads the server's whole log
        flooded = frames * size / MIB
        return f"{server_name}: {result}, grew by {growth:.1f} MiB for {flooded:.0f} MiB; server log:\n{server.log()}"

    assert result["sent"] >= 1, seen()
    assert result["close_code"] == close_code, seen()
    assert growth < RSS_GROWTH_BOUND_MIB, seen()
