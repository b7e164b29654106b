"""Fault matrix: the motor board, the speed sensor and a broken firmware (docs/faults.md).

The faults are injected into the simulated hardware (``SimFault``); the rows check that the
belt ends at rest with a fault latched, how fast, and how fast the belt got on the way.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from bench.rig import STANDSTILL_KMH, Rig, bench_sim_config
from firmware_bridge.sim.firmware import SimFault
from firmware_bridge.wire.messages import EStop, FwState, Stop
from tests.faults.conftest import Observations
from tests.faults.support import (
    STAGE1_MAX_KMH,
    fault_code,
    fault_options,
    hold_and_watch,
    measure_stop,
    motion_frames,
    stop_frames,
)

pytestmark = pytest.mark.slow

# Controller overspeed rule (config/demo.yaml control.overspeed): above the stage limit by
# max(0.3 km/h, 5 %) for more than 500 ms.
OVERSPEED_MARGIN_KMH = 0.3
OVERSPEED_MS = 500
RUNAWAY_ACCEL_KMH_S = 0.5


async def test_sensor_freeze_is_caught_by_the_follow_check(observations: Observations) -> None:
    async with Rig(fault_options()) as rig:
        await rig.start_belt(1.0)
        watch = rig.watch_belt()
        t0 = time.monotonic_ns()
        await rig.simulator.inject(SimFault.SENSOR_FREEZE)
        # A frozen reading is only visible when the belt should change speed.
        await rig.panel.ok(f"target {STAGE1_MAX_KMH}")
        code = await fault_code(rig, timeout_s=15)
        latched = time.monotonic_ns()
        assert code == "not_following"
        stop = await measure_stop(rig, watch, t0, 1.0, timeout_s=15)
        await watch.stop()
        assert stop.peak_kmh <= STAGE1_MAX_KMH + 0.1, stop
        peak = await hold_and_watch(rig, 1.0)
        assert peak <= STANDSTILL_KMH
        state = await rig.status()
        assert state["state"] == "faulted"
        # With the reading stuck above standstill the controller cannot see the belt at rest:
        # a reset is refused, and SIGTERM waits control.shutdown_timeout_s, then sends ESTOP.
        # Mend the sensor so that the rig can shut the service down promptly.
        await rig.simulator.clear(SimFault.SENSOR_FREEZE)
        observations.record(
            "test_sensor_freeze_is_caught_by_the_follow_check",
            **stop.__dict__,
            fault=code,
            fault_after_ms=round((latched - t0) / 1e6),
            frozen_reading_kmh=state["speed_kmh"],
        )


async def test_motor_runaway_is_stopped_below_the_stage_max(observations: Observations) -> None:
    async with Rig(fault_options()) as rig:
        await rig.start_belt(1.0)
        watch = rig.watch_belt()
        t0 = time.monotonic_ns()
        await rig.simulator.inject(SimFault.RUNAWAY)
        code = await fault_code(rig, timeout_s=10)
        stop = await measure_stop(rig, watch, t0, 1.0, timeout_s=15)
        await watch.stop()
        assert stop.peak_kmh <= STAGE1_MAX_KMH, stop
        assert code in ("firmware_fault", "overspeed", "not_following"), code
        assert rig.simulator.firmware.state is FwState.FAULT
        observations.record(
            "test_motor_runaway_is_stopped_below_the_stage_max",
            **stop.__dict__,
            fault=code,
            firmware_fault=rig.simulator.firmware.fault.name,
        )


async def test_stuck_motor_board_is_caught_by_the_follow_check(
    observations: Observations,
) -> None:
    async with Rig(fault_options()) as rig:
        await rig.start_belt(1.0)
        watch = rig.watch_belt()
        t0 = time.monotonic_ns()
        await rig.simulator.inject(SimFault.STUCK_SPEED)
        # The board holds 1.0 km/h whatever it is asked: ask for more.
        await rig.panel.ok(f"target {STAGE1_MAX_KMH}")
        code = await fault_code(rig, timeout_s=15)
        latched = time.monotonic_ns()
        stop = await measure_stop(rig, watch, t0, 1.0, timeout_s=15)
        await watch.stop()
        assert code == "not_following", code
        assert stop.peak_kmh <= 1.0 + 0.1, stop
        # The firmware removes motor power at the end of its stop ramp, which stops a stuck
        # board; the belt must not restart.
        assert not rig.simulator.firmware.motor_powered
        peak = await hold_and_watch(rig, 1.0)
        assert peak <= STANDSTILL_KMH
        observations.record(
            "test_stuck_motor_board_is_caught_by_the_follow_check",
            **stop.__dict__,
            fault=code,
            fault_after_ms=round((latched - t0) / 1e6),
            firmware_state=rig.simulator.firmware.state.name,
        )


async def test_lease_ignoring_firmware_runaway_is_stopped_by_controller_estop(
    observations: Observations,
) -> None:
    # A firmware that neither honours its lease nor checks the belt itself: only the
    # controller's own plausibility checks are left.
    async with Rig(fault_options(sim_config=bench_sim_config(self_checks=False))) as rig:
        await rig.simulator.inject(SimFault.LEASE_IGNORED)
        await rig.start_belt(1.0)
        watch = rig.watch_belt()
        t0 = time.monotonic_ns()
        await rig.simulator.inject(SimFault.RUNAWAY)
        estop = await rig.wire.wait_for((EStop,), after_ns=t0, timeout_s=15)
        assert estop is not None, "no ESTOP from the controller"
        code = await fault_code(rig)
        stop = await measure_stop(rig, watch, t0, 1.0, timeout_s=15)
        await watch.stop()
        assert code in ("overspeed", "not_following"), code
        # The overspeed rule lets the belt reach limit + margin for overspeed_ms before ESTOP.
        bound = (
            STAGE1_MAX_KMH
            + OVERSPEED_MARGIN_KMH
            + RUNAWAY_ACCEL_KMH_S * (OVERSPEED_MS + 200) / 1000
        )
        assert stop.peak_kmh <= bound, stop
        first = stop_frames(rig, t0)[0]
        observations.record(
            "test_lease_ignoring_firmware_runaway_is_stopped_by_controller_estop",
            **stop.__dict__,
            fault=code,
            first_stop_frame=type(first.message).__name__,
            estop_after_ms=round((estop.t_ns - t0) / 1e6),
            peak_bound_kmh=round(bound, 2),
        )


async def test_lease_ignoring_firmware_unplugged_runs_on_until_replug_then_stops(
    observations: Observations,
) -> None:
    # With the cable out nothing on the host can reach the firmware: a firmware that ignores
    # its lease keeps the belt running (only the hardware key and e-stop help then). The
    # controller latches link_stale meanwhile, and stops the belt the moment the link is back.
    async with Rig(fault_options()) as rig:
        await rig.simulator.inject(SimFault.LEASE_IGNORED)
        await rig.start_belt(STAGE1_MAX_KMH)
        await rig.simulator.disconnect()
        assert await fault_code(rig) == "link_stale"
        unplugged_low = min(await hold_and_low(rig, 2.0), rig.belt_kmh)
        assert unplugged_low >= STAGE1_MAX_KMH - 0.3, "the lease-ignoring firmware stopped"
        watch = rig.watch_belt()
        speed = rig.belt_kmh
        t0 = time.monotonic_ns()
        await rig.simulator.reconnect()
        first = await rig.wire.wait_for((EStop, Stop), after_ns=t0, timeout_s=5)
        assert first is not None, "no stop after the re-plug"
        stop = await measure_stop(rig, watch, t0, speed, timeout_s=10)
        await watch.stop()
        assert motion_frames(rig, t0) == []
        observations.record(
            "test_lease_ignoring_firmware_unplugged_runs_on_until_replug_then_stops",
            **stop.__dict__,
            belt_while_unplugged_min_kmh=round(unplugged_low, 2),
            first_frame_after_replug=type(first.message).__name__,
            first_stop_after_replug_ms=round((first.t_ns - t0) / 1e6),
        )


async def hold_and_low(rig: Rig, seconds: float) -> float:
    """Watch the belt for ``seconds``; the lowest true speed seen (km/h)."""
    watch = rig.watch_belt()
    try:
        await asyncio.sleep(seconds)  # an observation window, not a wait for a condition
    finally:
        await watch.stop()
    return min(v for _, v in watch.samples)
