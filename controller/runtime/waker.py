"""The control loop's sleep: until its next absolute tick, or earlier on a safety edge or the
core's timer deadline (SR-TIMER-1).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from controller.runtime.alarm import Alarm
from controller.runtime.stats import LoopStats

#: A timer tick is scheduled this long after the core's deadline, so the millisecond clock
#: the core reads has certainly reached it (a float seconds value may round just below).
TIMER_MARGIN_S = 0.00005


def monotonic_ms() -> int:
    """Integer milliseconds from the monotonic clock: the only clock the core sees."""
    return time.monotonic_ns() // 1_000_000


class LoopWaker:
    """Where the control loop sleeps between ticks.

    ``wake()`` (a safety edge, a remote stop, a shutdown or reload request) ends the current
    wait at once, or the next one if the loop is not waiting. ``deadline_ms`` is the core's
    next timer deadline on ``clock_ms`` (``Decision.next_deadline_ms``), or ``None``.
    """

    def __init__(self, clock_ms: Callable[[], int]) -> None:
        self.clock_ms = clock_ms
        self.deadline_ms: int | None = None
        self._waiter: asyncio.Future[bool] | None = None
        self._wake_pending = False
        #: The precise alarm of the running tick schedule; ``loop.call_at`` without one.
        self.alarm: Alarm | None = None

    def wake(self) -> None:
        """End the loop's wait now (or its next wait, if it is not waiting)."""
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(True)
        else:
            self._wake_pending = True

    def timer_loop_time(self, loop: asyncio.AbstractEventLoop) -> float | None:
        """The core's next timer deadline on the event loop's clock, or None."""
        deadline_ms = self.deadline_ms
        if deadline_ms is None:
            return None
        if self.clock_ms is monotonic_ms:
            # loop.time() is time.monotonic(): the very clock of monotonic_ms.
            return deadline_ms / 1000.0 + TIMER_MARGIN_S
        return loop.time() + (deadline_ms - self.clock_ms()) / 1000.0 + TIMER_MARGIN_S

    async def wait_until(self, deadline: float, timer_at: float | None = None) -> bool:
        """Sleep until the loop-clock ``deadline``; True if woken before it, by ``wake()`` or
        by the core's timer deadline ``timer_at`` (loop clock) falling before it."""
        if self._wake_pending:
            self._wake_pending = False
            return True
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bool] = loop.create_future()
        self._waiter = future
        early = timer_at is not None and timer_at < deadline
        at = timer_at if early and timer_at is not None else deadline
        alarm = self.alarm
        handle: asyncio.TimerHandle | None = None
        if alarm is not None:
            alarm.set(at, lambda: _resolve(future, early))
        else:
            handle = loop.call_at(at, _resolve, future, early)
        try:
            return await future
        finally:
            if handle is not None:
                handle.cancel()
            elif alarm is not None:
                alarm.cancel()
            self._waiter = None


def _resolve(future: asyncio.Future[bool], early: bool) -> None:
    if not future.done():
        future.set_result(early)


class TickSchedule:
    """The control loop's ticks at ``rate_hz`` on absolute deadlines (``t0 + k * period``):
    a late tick is counted in ``stats`` and whole missed periods skipped, never made up;
    a wake or the core's timer adds a tick between them."""

    def __init__(self, waker: LoopWaker, stats: LoopStats, rate_hz: float) -> None:
        self._waker = waker
        self._stats = stats
        self._loop = asyncio.get_running_loop()
        self._period_s = 1.0 / rate_hz
        self._late_threshold_s = self._period_s / 4
        self._next_deadline = self._loop.time() + self._period_s
        self._alarm = Alarm(self._loop)
        waker.alarm = self._alarm

    def close(self) -> None:
        """Release the alarm; the waker falls back to ``loop.call_at``."""
        if self._waker.alarm is self._alarm:
            self._waker.alarm = None
        self._alarm.close()

    async def next_tick(self) -> None:
        """Return at the next tick: the next deadline, a wake or the core's timer."""
        loop = self._loop
        stats = self._stats
        period_s = self._period_s
        timer_at = self._waker.timer_loop_time(loop)
        woken = await self._waker.wait_until(self._next_deadline, timer_at)
        now = loop.time()
        if woken:
            stats.woken_ticks += 1
            if timer_at is not None and now >= timer_at:
                stats.timer_ticks += 1
        else:
            lateness_s = now - self._next_deadline
            stats.record(lateness_s, self._late_threshold_s)
            if lateness_s >= period_s:
                skipped = int(lateness_s // period_s)
                stats.missed_ticks += skipped
                self._next_deadline += skipped * period_s
            self._next_deadline += period_s
        stats.ticks += 1
