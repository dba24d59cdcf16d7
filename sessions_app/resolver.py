"""Workspace paths resolved off the event loop, in a few threads of their own, with a time bound.

`realpath` and `isdir` block on the filesystem: a path on a hung network mount would stall
every connection of the process and its heartbeat (and then peers reap it as dead). Here
they run in a pool of WSS_WORKSPACE_RESOLVE_THREADS threads, and a resolution that takes
longer than WSS_WORKSPACE_RESOLVE_TIMEOUT_SECONDS is answered `unavailable`. A thread stuck
in the kernel cannot be killed, so the pool is what bounds them: however many hung paths
arrive, at most that many threads wait on them; later requests queue, and are answered
`unavailable` when their time is up (a queued request that has not started is dropped).
The pool is separate from the default executor and the registry writer, which stay free.
"""

import asyncio
from concurrent.futures import ThreadPoolExecutor

from .conf import app_settings
from .errors import Unavailable
from .process import process_state
from .workspaces import roots_resolve, workspace_resolve

# The one blocking call, named at the module boundary so that a test can stand in a path
# that never resolves (there is no hung mount to test against).
blocking_resolve = workspace_resolve


def resolve_pool() -> ThreadPoolExecutor:
    """The bounded pool, made on first use (again if the configured size changed)."""
    return process_state().resolve_pool(max(int(app_settings.WSS_WORKSPACE_RESOLVE_THREADS), 1))


async def workspace_resolve_async(raw_path: str) -> str:
    """The real path of the workspace, resolved in the pool within the time bound."""
    configured = tuple(app_settings.WSS_WORKSPACE_ROOTS)
    roots = roots_resolve(configured)  # cached: the roots' own resolution happens once
    timeout = app_settings.WSS_WORKSPACE_RESOLVE_TIMEOUT_SECONDS
    future = asyncio.get_running_loop().run_in_executor(
        resolve_pool(), lambda: blocking_resolve(raw_path, roots=roots, lexical_roots=configured)
    )
    try:
        return await asyncio.wait_for(future, timeout)
    except TimeoutError:
        raise Unavailable(f"The workspace path could not be resolved within {timeout:g} s; try again later.") from None
