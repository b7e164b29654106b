"""The virtual-clock event loop the scenario library runs on by default."""

from __future__ import annotations

import asyncio
import threading
import time

from controller.tools.virtual_time import VirtualTimeLoop, run_virtual


def test_an_hour_of_sleep_takes_no_real_time() -> None:
    async def main() -> float:
        loop = asyncio.get_running_loop()
        start = loop.time()
        await asyncio.sleep(3600.0)
        return loop.time() - start

    real_start = time.monotonic()
    assert run_virtual(main()) >= 3600.0
    assert time.monotonic() - real_start < 5.0


def test_timers_fire_in_order_at_their_virtual_times() -> None:
    async def main() -> list[tuple[str, int]]:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, VirtualTimeLoop)
        t0 = loop.clock_ms()
        fired: list[tuple[str, int]] = []

        async def at(name: str, delay_s: float) -> None:
            await asyncio.sleep(delay_s)
            fired.append((name, loop.clock_ms() - t0))

        await asyncio.gather(at("c", 0.3), at("a", 0.1), at("b", 0.2))
        return fired

    assert run_virtual(main()) == [("a", 100), ("b", 200), ("c", 300)]


def test_work_in_a_thread_is_waited_for_in_real_time() -> None:
    """A thread's result arrives before a virtual timeout much longer than its real time."""
    done = threading.Event()

    def work() -> str:
        time.sleep(0.05)
        done.set()
        return "written"

    async def main() -> str:
        loop = asyncio.get_running_loop()
        return await asyncio.wait_for(loop.run_in_executor(None, work), timeout=1.0)

    assert run_virtual(main()) == "written"
    assert done.is_set()
