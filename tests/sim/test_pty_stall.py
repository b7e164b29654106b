"""The simulator on a pty, descheduled by a loaded host: its own stall is not a late host.

A chip's UART receives while its main loop runs; the simulator is a process that can be
descheduled between waking for a tick and reading the port. SET_SPEED frames that wait unread
in the port during such a stall must renew the lease as of when the simulator last looked
(FW-3), and a stall longer than the lease still expires it. Time is the simulator's injected
clock, moved by the test; nothing waits on wall time for correctness.
"""

from __future__ import annotations

import os
import tty
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest

from firmware_bridge.sim.firmware import SimConfig
from firmware_bridge.sim.pty import PtySimulator
from firmware_bridge.wire.codec import encode_frame
from firmware_bridge.wire.messages import FwFault, FwState, SetSpeed, host_hello
from tests.sim.helpers import LEASE_MS, configure_msg, quiet_physics
from tests.waiting import wait_until

pytestmark = pytest.mark.timeout(30)

TICK_MS = 5
RENEW = SetSpeed(speed_kmh=2.0, accel_kmh_s=2.0, lease_ms=LEASE_MS)


class Clock:
    def __init__(self) -> None:
        self.now_ms = 10_000

    def __call__(self) -> int:
        return self.now_ms


@asynccontextmanager
async def host_port(sim: PtySimulator) -> AsyncIterator[Callable[[int, object], None]]:
    fd = os.open(sim.port, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    tty.setraw(fd)

    def send(seq: int, msg: object) -> None:
        os.write(fd, encode_frame(seq, msg))  # type: ignore[arg-type] # any host message

    try:
        yield send
    finally:
        os.close(fd)


async def step(sim: PtySimulator, clock: Clock, by_ms: int) -> None:
    """Advance the clock tick by tick, letting the simulator look at the port each tick."""
    end = clock.now_ms + by_ms
    while clock.now_ms < end:
        clock.now_ms = min(end, clock.now_ms + TICK_MS)
        await wait_until(
            lambda: sim.looked_ms >= clock.now_ms, timeout_s=5, what="the simulator's tick"
        )


async def running(sim: PtySimulator, clock: Clock, send: Callable[[int, object], None]) -> None:
    await step(sim, clock, sim.firmware.config.self_test_ms + 50)
    send(0, host_hello())
    send(1, configure_msg())
    await step(sim, clock, 20)
    send(2, RENEW)
    await wait_until(
        lambda: sim.firmware.state is FwState.RUNNING, timeout_s=5, what="RUNNING after SET_SPEED"
    )


@pytest.mark.parametrize("stall_ms", [LEASE_MS - 100, LEASE_MS + 200])
async def test_FW_3_a_stall_of_the_simulator_is_not_a_late_host(stall_ms: int) -> None:
    clock = Clock()
    async with (
        PtySimulator(SimConfig(physics=quiet_physics()), clock_ms=clock, tick_ms=TICK_MS) as sim,
        host_port(sim) as send,
    ):
        await running(sim, clock, send)
        await step(sim, clock, LEASE_MS - 100)  # the lease has 100 ms left
        # The host renews on time, but the simulator is descheduled: the frame waits in the
        # port while the clock moves past the old deadline in one jump.
        send(3, RENEW)
        clock.now_ms += stall_ms
        await wait_until(
            lambda: sim.looked_ms >= clock.now_ms, timeout_s=5, what="the simulator awake"
        )
        await step(sim, clock, TICK_MS)
        if stall_ms < LEASE_MS:
            # Credited to when the simulator last looked: renewed, still running.
            assert sim.firmware.state is FwState.RUNNING, sim.firmware.fault
        else:
            # Longer than the lease itself: expired, as on a chip whose receiver stopped.
            assert sim.firmware.state is FwState.FAULT
            assert sim.firmware.fault is FwFault.LEASE_EXPIRED
