"""SR-MOTION-2 against the simulated firmware's FW-4: the safety core drives the firmware tick
by tick (explicit times, no I/O) with the shipped ceilings (1.0 km/h/s up, 3.6 km/h/s down)
and a stage that accelerates at 0.5 km/h/s and decelerates at 3.6 km/h/s.

While the belt speeds up, the firmware's set-point lags behind the speed last sent (by a tick,
more after a late tick). A target lowered to just below the speed last sent used to go out
with the deceleration rate while still above the firmware's set-point: the firmware took
3.6 km/h/s for an acceleration and latched ACCEL_ABOVE_CEILING, stopping the belt.
"""

from __future__ import annotations

import dataclasses

import pytest

from controller.rules.core import decide, initial_state
from controller.rules.model import (
    Button,
    CoreState,
    Decision,
    FirmwareState,
    FirmwareStatus,
    GripLossAction,
    Inputs,
    LocalCommand,
    Mode,
    Press,
    SafetyConfig,
    SetSpeed,
    SetTarget,
)
from firmware_bridge.port.bridge import FirmwareLimits
from firmware_bridge.sim.firmware import SimConfig
from firmware_bridge.wire import messages
from tests.core.support import BOOT_ID, CHECKSUM, single_stage_config
from tests.sim.helpers import LIMITS, Host, quiet_physics

SHIPPED_LIMITS = dataclasses.replace(LIMITS, max_accel_kmh_s=1.0, max_decel_kmh_s=3.6)
CONFIG = single_stage_config(
    max_kmh=3.0, start_kmh=0.5, accel_kmh_s=0.5, decel_kmh_s=3.6, hands=0,
    action=GripLossAction.NONE, grace_ms=0,
)  # fmt: skip


class CoreOnSim:
    """The safety core driving a simulated firmware, every tick's command sent at once."""

    def __init__(
        self, config: SafetyConfig = CONFIG, limits: FirmwareLimits = SHIPPED_LIMITS
    ) -> None:
        self.config = config
        self.host = Host(SimConfig(physics=quiet_physics()))
        self.host.handshake(limits)
        self.state: CoreState = initial_state(config)

    def tick(self, dt_ms: int, *local: LocalCommand) -> Decision:
        self.host.advance_by(dt_ms)
        now_ms = self.host.now_ms
        report = self.host.last_status()
        status = FirmwareStatus(
            received_ms=now_ms,
            measured_kmh=report.measured_kmh,
            commanded_kmh=report.commanded_kmh,
            state=FirmwareState(report.state.name.lower()),
            fault_code=int(report.fault),
            safety_key_closed=report.safety_key_closed,
            config_checksum=CHECKSUM,
            expected_config_checksum=CHECKSUM,
            boot_id=BOOT_ID,
        )
        inputs = Inputs(False, False, False, True, status, local=local)
        decision = decide(self.state, inputs, self.config, now_ms)
        self.state = decision.state
        motion = decision.motion
        if isinstance(motion, SetSpeed):
            self.host.send(
                messages.SetSpeed(
                    speed_kmh=round(motion.speed_kmh, 2),
                    accel_kmh_s=motion.accel_kmh_s,
                    lease_ms=motion.lease_ms,
                )
            )
        return decision


@pytest.mark.parametrize("late_ms", [20, 60, 100])
@pytest.mark.parametrize("lower_by_kmh", [0.01, 0.02, 0.03, 0.05])
def test_SR_MOTION_2_target_lowered_just_below_a_rising_speed_keeps_the_firmware_running(
    late_ms: int, lower_by_kmh: float
) -> None:
    rig = CoreOnSim()
    for _ in range(10):
        rig.tick(20)
    assert rig.tick(20, Press(Button.START)).state.mode is Mode.RUNNING
    rig.tick(20, SetTarget(3.0))
    for _ in range(50):
        rig.tick(20)
    rig.tick(late_ms)  # one late tick: the speed sent jumps, the firmware ramps after it
    sent_kmh = rig.state.commanded_kmh
    assert rig.host.fw.commanded_kmh < sent_kmh  # the firmware's set-point lags behind
    rig.tick(20, SetTarget(round(sent_kmh - lower_by_kmh, 2)))
    for _ in range(50):
        rig.tick(20)
    assert rig.host.fault() is messages.FwFault.NONE, rig.host.naks()
    assert rig.state.mode is Mode.RUNNING, rig.state.fault
    assert rig.host.fw.commanded_kmh == pytest.approx(round(sent_kmh - lower_by_kmh, 2))


@pytest.mark.parametrize("late_tick", [5, 10, 15, 20])
def test_SR_MOTION_2_a_stage_accelerating_faster_than_the_firmware_decelerates_holds_safely(
    late_tick: int,
) -> None:
    """The mirror case, an odd but valid configuration: the stage accelerates at 2.0 km/h/s,
    decelerates at 1.5 km/h/s, and the firmware's ceilings are exactly those. The target is
    lowered from 3.0 to 2.0 km/h; one tick of the deceleration comes 100 ms late, so the
    firmware's set-point is still above 2.0 when the core reaches it and holds. Holding used
    to go out at the 2.0 km/h/s acceleration, which the firmware, still ramping down, took
    for a deceleration above its 1.5 km/h/s ceiling (ACCEL_ABOVE_CEILING)."""
    config = single_stage_config(
        max_kmh=3.0, start_kmh=0.5, accel_kmh_s=2.0, decel_kmh_s=1.5, hands=0,
        action=GripLossAction.NONE, grace_ms=0,
    )  # fmt: skip
    limits = dataclasses.replace(SHIPPED_LIMITS, max_accel_kmh_s=2.0, max_decel_kmh_s=1.5)
    rig = CoreOnSim(config, limits)
    for _ in range(10):
        rig.tick(20)
    assert rig.tick(20, Press(Button.START)).state.mode is Mode.RUNNING
    rig.tick(20, SetTarget(3.0))
    for _ in range(100):
        rig.tick(20)
    assert rig.host.fw.commanded_kmh == 3.0
    rig.tick(20, SetTarget(2.0))
    for tick in range(60):
        rig.tick(100 if tick == late_tick else 20)
    assert rig.host.fault() is messages.FwFault.NONE, rig.host.naks()
    assert rig.state.mode is Mode.RUNNING, rig.state.fault
    assert rig.host.fw.commanded_kmh == pytest.approx(2.0)
