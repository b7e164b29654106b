"""The control loop's alarm (runtime/alarm.py): a timerfd on Linux, ``loop.call_at`` elsewhere.

Nothing here is timed against a goal: the assertions are that the callback runs once, never
before its time, that ``set`` replaces and ``cancel`` forgets, and that the waker uses it.
How late it wakes is measured by ``python -m bench`` (docs/performance.md, loop lateness).
"""

from __future__ import annotations

import asyncio
import os
import sys

import pytest

from controller.runtime.alarm import Alarm
from controller.runtime.stats import LoopStats
from controller.runtime.waker import LoopWaker, TickSchedule, monotonic_ms

MODES = [pytest.param(True, id="timerfd"), pytest.param(False, id="call_at")]


async def fired_at(alarm: Alarm, when: float) -> float:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[float] = loop.create_future()
    alarm.set(when, lambda: done.set_result(loop.time()))
    return await asyncio.wait_for(done, timeout=5.0)


@pytest.mark.parametrize("use_timerfd", MODES)
async def test_alarm_calls_back_once_never_early(use_timerfd: bool) -> None:
    loop = asyncio.get_running_loop()
    alarm = Alarm(loop, use_timerfd=use_timerfd)
    try:
        if use_timerfd and sys.platform.startswith("linux"):
            assert alarm.precise
        for offset_s in (0.003, 0.0101, 0.0005):
            when = loop.time() + offset_s
            assert await fired_at(alarm, when) >= when
    finally:
        alarm.close()


@pytest.mark.parametrize("use_timerfd", MODES)
async def test_alarm_in_the_past_fires_at_once(use_timerfd: bool) -> None:
    loop = asyncio.get_running_loop()
    alarm = Alarm(loop, use_timerfd=use_timerfd)
    try:
        due = loop.time() - 1.0
        fired = await fired_at(alarm, due)  # wait_for raises if it never fires
        assert due < fired <= loop.time()
    finally:
        alarm.close()


@pytest.mark.parametrize("use_timerfd", MODES)
async def test_alarm_set_replaces_and_cancel_forgets(use_timerfd: bool) -> None:
    loop = asyncio.get_running_loop()
    alarm = Alarm(loop, use_timerfd=use_timerfd)
    calls: list[str] = []
    try:
        alarm.set(loop.time() + 0.002, lambda: calls.append("replaced"))
        second = loop.time() + 0.004
        assert await fired_at(alarm, second) >= second
        alarm.set(loop.time() + 0.001, lambda: calls.append("cancelled"))
        alarm.cancel()
        # A later alarm fires, and the cancelled one (earlier) never ran.
        await fired_at(alarm, loop.time() + 0.006)
        assert calls == []
    finally:
        alarm.close()


async def test_alarm_falls_back_on_a_clock_that_is_not_monotonic() -> None:
    loop = asyncio.get_running_loop()
    loop_time = loop.time
    loop.time = lambda: loop_time() + 1000.0  # type: ignore[method-assign]  # a virtual clock
    try:
        alarm = Alarm(loop)
        assert not alarm.precise
        alarm.close()
    finally:
        del loop.time


async def test_tick_schedule_gives_the_waker_its_alarm_and_takes_it_back() -> None:
    waker = LoopWaker(monotonic_ms)
    ticks = TickSchedule(waker, LoopStats(), rate_hz=200.0)
    assert waker.alarm is not None
    stats_before = waker.alarm
    await asyncio.wait_for(ticks.next_tick(), timeout=5.0)
    waker.wake()
    await asyncio.wait_for(ticks.next_tick(), timeout=5.0)
    assert waker.alarm is stats_before
    ticks.close()
    assert waker.alarm is None
    loop = asyncio.get_running_loop()
    start = loop.time()
    assert await waker.wait_until(start + 0.002, start + 60.0) is False  # call_at again
    assert loop.time() >= start + 0.002


async def test_alarm_falls_back_to_call_at_when_the_timerfd_fails() -> None:
    """A timerfd that stops working (here: its descriptor closed under it) must not stall or
    crash the loop: the alarm still fires, on ``loop.call_at``, and says so."""
    loop = asyncio.get_running_loop()
    alarm = Alarm(loop)
    if not alarm.precise:
        pytest.skip("no timerfd on this platform")
    try:
        fd = alarm._fd  # the test breaks the descriptor on purpose
        loop.remove_reader(fd)
        os.close(fd)
        when = loop.time() + 0.002
        assert await fired_at(alarm, when) >= when
        assert not alarm.precise
    finally:
        alarm.close()
