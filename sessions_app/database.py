"""Blocking database work off the event loop, bounded in time: the lifecycle's own thread.

Registry calls of the lifecycle (heartbeat, reap, expire, retire) run on one dedicated
thread with its own connection, so the heartbeat never waits behind the consumers' writes;
each is bounded by WSS_REGISTRY_TIMEOUT_SECONDS, and a call that overruns leaves its thread
behind (a daemon: it never holds up the exit) while the next call gets a fresh one.
"""

import asyncio
import concurrent.futures
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from django.db import close_old_connections, connections

from .conf import app_settings
from .process import process_state

T = TypeVar("T")


def registry_timeout() -> float:
    """How long a caller waits for the registry before answering `unavailable`."""
    return app_settings.WSS_REGISTRY_TIMEOUT_SECONDS


class _DaemonExecutor(concurrent.futures.Executor):
    """One daemon thread running calls in order: a call stuck in the database never holds up the exit.

    (ThreadPoolExecutor's threads are joined at interpreter exit.)
    """

    def __init__(self, name: str) -> None:
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._run, name=name, daemon=True).start()

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> "concurrent.futures.Future[T]":
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._calls.put((future, fn, args, kwargs))
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._calls.put(None)

    async def aclose(self) -> None:
        """Close the thread's database connection, then the thread itself."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(
                asyncio.get_running_loop().run_in_executor(self, connections.close_all), registry_timeout()
            )
        self.shutdown(wait=False)

    def _run(self) -> None:
        while (item := self._calls.get()) is not None:
            future, fn, args, kwargs = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as error:
                future.set_exception(error)
        connections.close_all()


async def registry_call(function: Callable[[], T], *, timeout: float | None = None) -> T:
    """Run a registry function on the lifecycle thread (its own database connection).

    Waits at most `timeout` seconds (WSS_REGISTRY_TIMEOUT_SECONDS by default), then raises
    TimeoutError; the stuck thread is left to finish alone and the next call gets a new one.
    """
    state = process_state()
    if state.lifecycle_executor is None:
        state.lifecycle_executor = _DaemonExecutor("wss-lifecycle")
    executor = state.lifecycle_executor

    def call() -> T:
        close_old_connections()
        try:
            return function()
        finally:
            close_old_connections()

    future = asyncio.get_running_loop().run_in_executor(executor, call)
    try:
        return await asyncio.wait_for(future, registry_timeout() if timeout is None else timeout)
    except TimeoutError:
        if state.lifecycle_executor is executor:
            state.lifecycle_executor = None
        executor.shutdown(wait=False)  # the thread ends (closing its connection) once its call returns
        raise


async def registry_close() -> None:
    """Close the lifecycle thread's database connection and the thread itself."""
    state = process_state()
    if state.lifecycle_executor is None:
        return
    executor, state.lifecycle_executor = state.lifecycle_executor, None
    await executor.aclose()
