"""Fault matrix: the serial link and the controller process (docs/faults.md).

Each row runs ``treadmill run`` against the simulated firmware with the belt at stage 1's
maximum (2.0 km/h), injects the fault, and checks the safe outcome where it matters: the true
speed of the simulated belt, and the frames the firmware received.
"""

from __future__ import annotations

import signal
import time

import pytest

from bench.rig import STANDSTILL_KMH, Rig
from firmware_bridge.sim.firmware import SimFault
from firmware_bridge.wire.messages import FwFault, FwState
from tests.faults.conftest import Observations
from tests.faults.support import (
    STAGE1_MAX_KMH,
    fault_code,
    fault_options,
    hold_and_watch,
    measure_stop,
    motion_frames,
    stop_budget_ms,
    stop_frames,
)

pytestmark = pytest.mark.slow


async def test_serial_unplugged_firmware_stops_belt_and_replug_does_not_move_it(
    observations: Observations,
) -> None:
    async with Rig(fault_options()) as rig:
        await rig.start_belt(STAGE1_MAX_KMH)
        watch = rig.watch_belt()
        speed = rig.belt_kmh
        t0 = time.monotonic_ns()
        await rig.simulator.disconnect()
        stop = await measure_stop(rig, watch, t0, speed)
        await watch.stop()
        assert stop.stop_ms <= stop_budget_ms(speed), stop
        assert stop.peak_kmh <= speed + 0.1, stop
        assert rig.simulator.firmware.fault is FwFault.LEASE_EXPIRED
        assert await fault_code(rig) == "link_stale"

        replug = time.monotonic_ns()
        await rig.simulator.reconnect()
        await rig.wait_status(
            lambda s: bool(s["firmware"]["link"]), timeout_s=10, what="link back after re-plug"
        )
        peak = await hold_and_watch(rig, 2.0)
        state = await rig.status()
        assert peak <= STANDSTILL_KMH, f"belt moved to {peak} km/h after the re-plug"
        assert motion_frames(rig, replug) == [], "SET_SPEED sent after the re-plug"
        assert state["fault"]["code"] == "link_stale", state["fault"]
        assert state["state"] == "faulted"
        observations.record(
            "test_serial_unplugged_firmware_stops_belt_and_replug_does_not_move_it",
            **stop.__dict__,
            after_replug_peak_kmh=peak,
            firmware_fault=rig.simulator.firmware.fault.name,
        )


async def test_firmware_reboot_latches_and_belt_stays_at_rest(
    observations: Observations,
) -> None:
    async with Rig(fault_options()) as rig:
        await rig.start_belt(STAGE1_MAX_KMH)
        boots = rig.simulator.firmware.boots
        watch = rig.watch_belt()
        speed = rig.belt_kmh
        t0 = time.monotonic_ns()
        await rig.simulator.inject(SimFault.REBOOT)
        stop = await measure_stop(rig, watch, t0, speed)
        await watch.stop()
        assert await fault_code(rig) == "firmware_reboot"
        peak = await hold_and_watch(rig, 2.0)
        assert peak <= STANDSTILL_KMH
        assert rig.simulator.firmware.boots == boots + 1
        assert rig.simulator.firmware.state is not FwState.RUNNING
        # Until the new boot id arrives in the firmware's HELLO the controller keeps renewing
        # its lease (the rebooted firmware refuses those: not configured); once it has seen
        # the reboot it sends only stops.
        first_stop = stop_frames(rig, t0)[0]
        in_flight = motion_frames(rig, t0)
        assert [f for f in in_flight if f.t_ns > first_stop.t_ns] == []
        # A reset is refused until the belt is at rest, and never restarts the belt.
        await rig.to_idle()
        peak_after_reset = await hold_and_watch(rig, 1.0)
        assert peak_after_reset <= STANDSTILL_KMH
        observations.record(
            "test_firmware_reboot_latches_and_belt_stays_at_rest",
            **stop.__dict__,
            after_peak_kmh=peak,
            detected_ms=round((first_stop.t_ns - t0) / 1e6, 1),
            set_speed_before_detection=len(in_flight),
        )


async def test_controller_sigkill_firmware_lease_stops_belt(observations: Observations) -> None:
    async with Rig(fault_options()) as rig:
        await rig.start_belt(STAGE1_MAX_KMH)
        watch = rig.watch_belt()
        speed = rig.belt_kmh
        assert rig.service.proc is not None
        t0 = time.monotonic_ns()
        rig.service.proc.kill()
        stop = await measure_stop(rig, watch, t0, speed)
        await watch.stop()
        assert stop.stop_ms <= stop_budget_ms(speed), stop
        assert rig.simulator.firmware.fault is FwFault.LEASE_EXPIRED
        assert await rig.service.wait(5) == -signal.SIGKILL
        observations.record(
            "test_controller_sigkill_firmware_lease_stops_belt",
            **stop.__dict__,
            budget_ms=round(stop_budget_ms(speed)),
        )


async def test_controller_sigstop_lease_stops_belt_and_sigcont_never_resumes(
    observations: Observations,
) -> None:
    async with Rig(fault_options()) as rig:
        await rig.start_belt(STAGE1_MAX_KMH)
        watch = rig.watch_belt()
        speed = rig.belt_kmh
        t0 = time.monotonic_ns()
        rig.service.signal(signal.SIGSTOP)
        stop = await measure_stop(rig, watch, t0, speed)
        await watch.stop()
        assert stop.stop_ms <= stop_budget_ms(speed), stop
        assert rig.simulator.firmware.fault is FwFault.LEASE_EXPIRED

        resumed = time.monotonic_ns()
        rig.service.signal(signal.SIGCONT)
        code = await fault_code(rig)
        peak = await hold_and_watch(rig, 3.0)
        assert peak <= STANDSTILL_KMH, f"belt moved to {peak} km/h after SIGCONT"
        assert rig.simulator.firmware.state is not FwState.RUNNING
        state = await rig.status()
        assert state["state"] == "faulted", state
        resumed_motion = motion_frames(rig, resumed)
        observations.record(
            "test_controller_sigstop_lease_stops_belt_and_sigcont_never_resumes",
            **stop.__dict__,
            fault_after_sigcont=code,
            secondary=state["fault"]["message"][:160],
            set_speed_frames_after_sigcont=len(resumed_motion),
            after_peak_kmh=peak,
        )
        assert resumed_motion == [], (
            f"{len(resumed_motion)} SET_SPEED frames above standstill after SIGCONT "
            f"(first {resumed_motion[0].message}); the firmware refused them"
        )
