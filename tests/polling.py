"""The one polling helper of the suite: wait for a condition, and say how long it took."""

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any

import pytest

# What a loaded 2-core machine may add to a documented bound: every timing bound in the
# suite is the documented figure plus this, never a multiple of it.
SLACK = 5.0


async def wait_until(predicate: Callable[[], Any], timeout: float, *, step: float = 0.05, what: str = "") -> float:
    """Poll `predicate` (sync or async) until it is truthy; the seconds it took.

    Fails the test when `timeout` seconds pass first, naming `what` if given.
    """
    start = time.monotonic()
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            pytest.fail(f"{what or 'condition'} not met within {timeout:g} s")
        await asyncio.sleep(step)


def wait_until_sync(predicate: Callable[[], Any], timeout: float, *, step: float = 0.05, what: str = "") -> float:
    """The same for synchronous tests: poll `predicate` until it is truthy; the seconds it took."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            pytest.fail(f"{what or 'condition'} not met within {timeout:g} s")
        time.sleep(step)
    return time.monotonic() - start
