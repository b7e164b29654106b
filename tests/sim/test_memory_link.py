"""The in-memory cable: the bridge handshakes with the simulated firmware, and an unplug is seen."""

from __future__ import annotations

import asyncio

from controller.tools.virtual_time import run_virtual
from firmware_bridge.sim.memory import MEMORY_PORT, MemorySimulator
from tests.sim.helpers import memory_bridge


async def _handshake_then_unplug() -> tuple[bool, list[tuple[bool, str]], bool]:
    loop = asyncio.get_running_loop()

    def clock_ms() -> int:
        return round(loop.time() * 1000)

    changes: list[tuple[bool, str]] = []
    async with MemorySimulator(clock_ms=clock_ms) as sim:
        bridge = memory_bridge(
            sim, clock_ms, on_link_change=lambda up, reason: changes.append((up, reason))
        )
        task = asyncio.create_task(bridge.run(), name="firmware-bridge")
        await asyncio.wait_for(bridge.ready.wait(), timeout=5.0)
        ready = bridge.connected
        await sim.disconnect()
        await asyncio.sleep(1.0)
        down = not bridge.connected
        await sim.reconnect()
        await asyncio.sleep(2.0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return ready and down, changes, sim.port == MEMORY_PORT


def test_the_bridge_handshakes_over_memory_and_sees_an_unplug_and_a_replug() -> None:
    ok, changes, named = run_virtual(_handshake_then_unplug())
    assert ok
    assert named
    assert [up for up, _ in changes] == [True, False, True, False]  # the last: bridge stopped
    assert "end of file" in changes[1][1]
    assert changes[3][1] == "bridge stopped"
