"""An asyncio event loop on a virtual clock, for running scenarios faster than real time.

:class:`VirtualTimeLoop` is a selector event loop whose :meth:`~VirtualTimeLoop.time` is a
virtual clock. Whenever nothing is ready to run and no I/O is pending, the clock jumps
straight to the next timer instead of sleeping, so a 10 s scenario takes as long as its work
does (Klipper's batch mode does the same for its host code). Everything in the loop must read
time from the loop (``loop.time()``, or :meth:`~VirtualTimeLoop.clock_ms` for the services'
millisecond clocks): a component that reads ``time.monotonic()`` would see real time.

I/O still happens for real (the simulator's pseudo-terminal): before each jump the loop waits
``real_slice_s`` of real time for I/O in flight (bytes written to a pseudo-terminal reach the
other end through the kernel a moment later). While work handed to a thread
(``run_in_executor``, ``asyncio.to_thread``) is running, the clock does not jump: it moves
with real time until the thread reports back.

Example::

    loop = VirtualTimeLoop()
    try:
        loop.run_until_complete(asyncio.sleep(3600.0))  # returns at once
        assert loop.time() >= 3600.0
    finally:
        loop.close()
"""

from __future__ import annotations

import asyncio
import selectors
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

_T = TypeVar("_T")


class _JumpingSelector(selectors.DefaultSelector):
    """A selector that, instead of sleeping ``timeout``, advances the loop's virtual clock."""

    def __init__(self) -> None:
        super().__init__()
        self.loop: VirtualTimeLoop | None = None

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        loop = self.loop
        events = super().select(0)
        if events or loop is None or timeout == 0:
            return events
        if loop.busy_threads:
            # A thread of the loop is working: time passes as in real time until it reports
            # back through the loop's self-pipe.
            wait_s = loop.real_slice_s * 10 if timeout is None else min(timeout, 0.005)
            started = time.monotonic()
            events = super().select(wait_s)
            if timeout is not None:
                loop.advance(min(time.monotonic() - started, timeout))
            return events
        # Bytes written to a pseudo-terminal reach the other end through the kernel a moment
        # later: give them a short real-time slice before virtual time jumps.
        events = super().select(loop.real_slice_s)
        if events or timeout is None:
            return events
        loop.advance(timeout)
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """A selector event loop on a virtual clock that starts at ``start_s``."""

    def __init__(self, *, start_s: float = 1000.0, real_slice_s: float = 0.0) -> None:
        selector = _JumpingSelector()
        super().__init__(selector)
        selector.loop = self
        self._virtual_s = start_s
        self.real_slice_s = real_slice_s  # real wait for I/O in flight before each jump
        self.busy_threads = 0

    def time(self) -> float:
        return self._virtual_s

    def advance(self, seconds: float) -> None:
        """Move the virtual clock forward (never back)."""
        if seconds > 0:
            self._virtual_s += seconds

    def clock_ms(self) -> int:
        """Integer milliseconds of the virtual clock: pass this as the services' ``clock_ms``."""
        return round(self._virtual_s * 1000)

    def run_in_executor(  # type: ignore[override]  # same signature, typed loosely by asyncio
        self, executor: Any, func: Callable[..., _T], *args: Any
    ) -> asyncio.Future[_T]:
        future = super().run_in_executor(executor, func, *args)
        self.busy_threads += 1

        def done(_: asyncio.Future[_T]) -> None:
            self.busy_threads -= 1

        future.add_done_callback(done)
        return future


def run_virtual(main: Coroutine[Any, Any, _T], *, start_s: float = 1000.0) -> _T:
    """``asyncio.run`` on a :class:`VirtualTimeLoop`."""
    with asyncio.Runner(loop_factory=lambda: VirtualTimeLoop(start_s=start_s)) as runner:
        return runner.run(main)
