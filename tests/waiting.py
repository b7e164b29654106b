"""Wait on a condition with a timeout: the test suite's only way to wait for something."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


async def wait_until(
    predicate: Callable[[], bool], *, timeout_s: float, what: str, poll_s: float = 0.005
) -> None:
    """Poll ``predicate`` until it is true; fail with ``what`` after ``timeout_s`` seconds."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(poll_s)


def wait_until_sync(
    predicate: Callable[[], bool], *, timeout_s: float, what: str, poll_s: float = 0.005
) -> None:
    """Blocking variant for code outside an event loop."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(poll_s)
