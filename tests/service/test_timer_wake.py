"""The control loop wakes at the core's timer deadline (SR-TIMER-1), not only on its ticks.

These drive the loop's wait directly: no service is started and nothing is timed; the
assertions are about which wake came first and on which clock the deadline is placed.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from controller.runtime.service import Service
from controller.runtime.waker import TIMER_MARGIN_S, monotonic_ms
from controller.settings.config import load_config
from tests.service.harness import write_config


def make_service(tmp_path: Path, **kwargs: object) -> Service:
    path = write_config(tmp_path)
    return Service(load_config(path), install_signal_handlers=False, **kwargs)  # type: ignore[arg-type]  # keyword pass-through


async def test_SR_TIMER_1_wait_ends_at_a_timer_before_the_next_tick(tmp_path: Path) -> None:
    service = make_service(tmp_path)
    loop = asyncio.get_running_loop()
    start = loop.time()
    woken = await service.waker.wait_until(start + 60.0, start + 0.005)
    assert woken is True  # ended early: the next regular tick was a minute away
    assert loop.time() >= start + 0.005


async def test_SR_TIMER_1_a_timer_after_the_next_tick_waits_for_the_tick(
    tmp_path: Path,
) -> None:
    service = make_service(tmp_path)
    loop = asyncio.get_running_loop()
    start = loop.time()
    woken = await service.waker.wait_until(start + 0.005, start + 60.0)
    assert woken is False  # the regular tick
    assert loop.time() >= start + 0.005


async def test_SR_TIMER_1_deadline_on_the_monotonic_clock_is_never_early(tmp_path: Path) -> None:
    service = make_service(tmp_path)
    loop = asyncio.get_running_loop()
    assert service.waker.timer_loop_time(loop) is None
    for deadline_ms in (1, 999, 123_456, 4_160, 10**12 + 7):
        service.waker.deadline_ms = deadline_ms
        at = service.waker.timer_loop_time(loop)
        assert at is not None
        # Waking at ``at`` on loop.time() (time.monotonic) reads at least deadline_ms.
        assert int(at * 1000) >= deadline_ms
        assert at - deadline_ms / 1000 <= 2 * TIMER_MARGIN_S
    assert service.waker.clock_ms is monotonic_ms


async def test_SR_TIMER_1_deadline_on_an_injected_clock_is_relative_to_now(
    tmp_path: Path,
) -> None:
    service = make_service(tmp_path, clock_ms=lambda: 5_000)
    loop = asyncio.get_running_loop()
    service.waker.deadline_ms = 5_250
    before = loop.time()
    at = service.waker.timer_loop_time(loop)
    after = loop.time()
    assert at is not None
    assert before + 0.25 <= at <= after + 0.25 + 2 * TIMER_MARGIN_S
