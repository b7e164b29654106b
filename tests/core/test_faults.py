"""Rules SR-ESTOP-*, SR-STALE-*, SR-PLAUS-*, SR-FW-*, SR-FAULT-* and SR-PREC-* of docs/safety.md."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace

import pytest

from controller.rules.core import decide, internal_fault
from controller.rules.faults import FAULT_ADVICE
from controller.rules.firmware_status import FIRMWARE_EMERGENCY_FAULT_CODES
from controller.rules.model import (
    Button,
    EStop,
    Fault,
    FaultCode,
    FirmwareState,
    Inputs,
    Mode,
    SetTarget,
    Stop,
    StopKind,
)
from controller.rules.tick import CLEAR_HOLD_MS
from firmware_bridge.wire.faults import CATEGORY_0_FAULTS, FAULTS, StopCategory
from tests.core.support import (
    DEFAULT_CONFIG,
    Rig,
    faulted_rig,
    idle_rig,
    make_config,
    running_rig,
    status,
    stopping_rig,
)

RigMaker = Callable[[], Rig]
EVERY_MODE: list[RigMaker] = [idle_rig, running_rig, stopping_rig, faulted_rig]


def _latched(rig: Rig) -> FaultCode | None:
    fault = rig.core.fault
    return None if fault is None else fault.code


# ---------------------------------------------------------------- e-stop and key


@pytest.mark.parametrize("make", EVERY_MODE)
def test_SR_ESTOP_1_estop_pressed_stops_at_once_and_latches_in_every_mode(
    make: RigMaker,
) -> None:
    rig = make()
    before = rig.core.fault
    rig.estop = True
    decision = rig.tick()
    assert decision.motion == EStop()
    assert decision.state.mode is Mode.FAULTED
    assert decision.state.fault is not None
    if before is None:
        assert decision.state.fault.code is FaultCode.ESTOP
    else:
        # A controlled-stop fault is upgraded to the emergency stop; the first is kept.
        assert decision.state.fault.code is FaultCode.ESTOP
        assert before.code in decision.state.secondary_faults
    # SR-STOP-3: ESTOP on every tick while the e-stop stays pressed.
    for _ in range(50):
        assert rig.tick().motion == EStop()
    rig.estop = False
    motions = [rig.tick().motion for _ in range(250)]
    assert rig.core.mode is Mode.FAULTED
    # Released and at rest: a plain Stop, so CLEAR_FAULT can clear the firmware's latch.
    assert rig.core.fault_rest_reached
    assert motions[-1] == Stop(3.6)
    first_stop = motions.index(Stop(3.6))
    assert all(m == EStop() for m in motions[:first_stop])
    assert all(m == Stop(3.6) for m in motions[first_stop:])


@pytest.mark.parametrize("knob", ["estop", "key"])
def test_SR_STOP_3_an_emergency_input_at_rest_sends_estop_again_until_released(knob: str) -> None:
    rig = faulted_rig(running=False)  # e-stop latched, released, belt at rest: a plain Stop
    assert rig.core.fault_rest_reached is True
    assert rig.tick().motion == Stop(3.6)
    setattr(rig, knob, knob == "estop")
    again = rig.tick()
    assert again.motion == EStop()
    assert again.state.fault_rest_reached is False  # rest counts again once released
    setattr(rig, knob, knob != "estop")
    released = rig.tick()
    assert released.motion == Stop(3.6)
    assert released.state.fault_rest_reached is True


@pytest.mark.parametrize("make", EVERY_MODE)
@pytest.mark.parametrize("source", ["console", "firmware"])
def test_SR_ESTOP_2_safety_key_out_stops_at_once_and_latches_in_every_mode(
    make: RigMaker, source: str
) -> None:
    rig = make()
    if source == "console":
        rig.key = False
    else:
        rig.fw_key = False
    decision = rig.tick()
    assert decision.motion == EStop()
    assert decision.state.fault is not None
    assert decision.state.fault.code is FaultCode.SAFETY_KEY
    assert "Put the safety key back" in decision.state.fault.message


# ---------------------------------------------------------------- stale link


@pytest.mark.parametrize("make", EVERY_MODE[:3])
@pytest.mark.parametrize("link", ["stale", "none"])
def test_SR_STALE_1_stale_or_missing_status_stops_and_latches_in_every_mode(
    make: RigMaker, link: str
) -> None:
    rig = make()
    rig.link = link
    decision = rig.tick()
    assert decision.state.mode is Mode.FAULTED
    assert decision.state.fault is not None
    assert decision.state.fault.code is FaultCode.LINK_STALE
    assert decision.motion == Stop(DEFAULT_CONFIG.stop_decel_kmh_s)
    expected = "501 ms old (limit 500 ms)" if link == "stale" else "no firmware status"
    assert expected in decision.state.fault.message


def test_SR_STALE_1_status_exactly_stale_ms_old_is_still_fresh() -> None:
    rig = running_rig()
    state = rig.core
    firmware = rig.firmware()
    assert firmware is not None
    inputs = Inputs(True, True, False, True, replace(firmware, received_ms=rig.now_ms))
    decision = decide(state, inputs, DEFAULT_CONFIG, rig.now_ms + DEFAULT_CONFIG.stale_ms)
    assert decision.state.mode is Mode.RUNNING
    late = decide(state, inputs, DEFAULT_CONFIG, rig.now_ms + DEFAULT_CONFIG.stale_ms + 1)
    assert late.state.mode is Mode.FAULTED


def test_SR_STALE_1_stale_link_while_faulted_is_recorded_once() -> None:
    rig = faulted_rig()
    rig.link = "stale"
    first = rig.tick()
    assert [e.kind for e in first.events] == ["fault"]
    assert "also seen while fault grip_lost is latched" in first.events[0].message
    assert rig.tick().events == ()
    assert rig.core.fault is not None
    assert rig.core.fault.code is FaultCode.GRIP_LOST
    assert rig.core.secondary_faults == (FaultCode.LINK_STALE,)


# ---------------------------------------------------------------- plausibility


# These steps of the reading are abrupt enough to count as a runaway (SR-PLAUS-5), which
# trips earlier; the SR-PLAUS-1 timer is shown with that rule's threshold out of reach.
NO_RUNAWAY = make_config(runaway_accel_kmh_s=10.0)


def test_SR_PLAUS_1_overspeed_beyond_margin_for_too_long_estops() -> None:
    rig = running_rig(NO_RUNAWAY)
    # Limit 2.0 km/h: margin max(0.3, 5 %) = 0.3 -> overspeed above 2.3 km/h.
    rig.tick(SetTarget(2.0))
    rig.run_ms(10_000)
    rig.measured_kmh = 2.31
    rig.run_ms(520)
    assert rig.core.mode is Mode.RUNNING
    decision = rig.tick()
    assert decision.state.fault is not None
    assert decision.state.fault.code is FaultCode.OVERSPEED
    assert decision.motion == EStop()
    assert "2.31 km/h for 520 ms" in decision.state.fault.message


def test_SR_PLAUS_1_overspeed_timer_restarts_when_speed_drops_back() -> None:
    rig = running_rig(NO_RUNAWAY)
    rig.tick(SetTarget(2.0))
    rig.run_ms(10_000)
    for _ in range(5):
        rig.measured_kmh = 2.5
        rig.run_ms(400)
        rig.measured_kmh = 2.0  # back within the margin for CLEAR_HOLD_MS: the timer restarts
        rig.tick()
        rig.run_ms(CLEAR_HOLD_MS)
    rig.measured_kmh = 2.3
    rig.run_ms(2000)
    assert _latched(rig) is None


def test_SR_PLAUS_1_overspeed_timer_restarts_after_a_gap_in_the_readings() -> None:
    rig = running_rig()
    rig.measured_kmh = 2.5
    rig.run_ms(400)
    assert rig.core.overspeed_since_ms is not None
    rig.link = "stale"
    assert rig.tick().state.overspeed_since_ms is None


def test_SR_PLAUS_1_overspeed_reference_is_the_commanded_speed_while_ramping_down() -> None:
    rig = running_rig(stage_number=3)
    rig.tick(SetTarget(5.0))
    rig.run_ms(15_000)
    rig.stage_cap = 1
    rig.measured_kmh = 5.0  # the belt is still at 5 km/h, commanded ramps down from 5
    rig.run_ms(1000)
    assert rig.core.fault is None or rig.core.fault.code is not FaultCode.OVERSPEED


def test_SR_PLAUS_1_overspeed_is_watched_while_idle_too() -> None:
    rig = idle_rig()
    rig.measured_kmh = 9.0
    rig.run_ms(600)
    assert rig.core.fault is not None
    # Moving at rest fires first here (same time limit); overspeed is recorded too.
    assert FaultCode.OVERSPEED in (rig.core.fault.code, *rig.core.secondary_faults)


def test_SR_PLAUS_2_belt_stalled_while_running_stops_and_latches() -> None:
    rig = running_rig()
    rig.tick(SetTarget(2.0))
    rig.run_ms(10_000)
    rig.measured_kmh = 0.0
    rig.run_ms(2000)
    assert rig.core.mode is Mode.RUNNING
    decision = rig.run_ms(40)[-1]
    assert decision.state.fault is not None
    assert decision.state.fault.code is FaultCode.NOT_FOLLOWING
    assert decision.state.fault.stop is StopKind.CONTROLLED
    assert decision.motion == Stop(DEFAULT_CONFIG.stop_decel_kmh_s)
    assert "below the expected 2.00 km/h" in decision.state.fault.message


def test_SR_PLAUS_2_belt_stalled_at_a_low_speed_is_caught_too() -> None:
    rig = running_rig()  # 0.5 km/h: a standing belt is within the 0.5 km/h tolerance
    rig.measured_kmh = 0.0
    rig.run_ms(2020)
    assert rig.core.mode is Mode.RUNNING
    latched = rig.tick().state
    assert latched.fault is not None
    assert latched.fault.code is FaultCode.NOT_FOLLOWING
    assert "(stalled, or more than 0.50 km/h behind)" in latched.fault.message


def test_SR_PLAUS_2_a_belt_slow_to_start_is_not_a_stall() -> None:
    rig = idle_rig()
    rig.press(Button.START)
    rig.measured_kmh = 0.0
    rig.run_ms(1500)  # the motor takes 1.5 s to break away
    rig.measured_kmh = None
    rig.run_ms(5000)
    assert rig.core.mode is Mode.RUNNING
    assert rig.core.fault is None


def test_SR_PLAUS_2_belt_running_away_above_expected_estops() -> None:
    rig = running_rig()
    rig.measured_kmh = 1.2  # expected 0.5, tolerance 0.5: 0.7 above, under the overspeed limit
    rig.run_ms(2040)
    assert rig.core.fault is not None
    assert rig.core.fault.code is FaultCode.NOT_FOLLOWING
    assert rig.core.fault.stop is StopKind.EMERGENCY


def test_SR_PLAUS_2_lag_while_ramping_is_allowed() -> None:
    rig = running_rig(stage_number=4)
    rig.tick(SetTarget(8.0))
    # The belt lags the ramp by 0.9 s at 0.5 km/h/s: 0.45 km/h, plus a 0.5 km/h load dip.
    for _ in range(800):
        rig.measured_kmh = max(0.0, rig.core.commanded_kmh - 0.9)
        rig.tick()
    assert rig.core.fault is None
    assert rig.core.commanded_kmh == 8.0


def test_SR_PLAUS_2_belt_not_slowing_while_stopping_estops() -> None:
    rig = stopping_rig()
    rig.measured_kmh = 0.3  # the belt keeps creeping: frozen sensor or runaway
    rig.run_ms(2000)
    assert rig.core.mode is Mode.STOPPING
    rig.run_ms(400)
    assert rig.core.fault is not None
    assert rig.core.fault.code is FaultCode.NOT_FOLLOWING
    assert rig.history[-1].motion == EStop()


def test_SR_PLAUS_2_belt_stopping_faster_than_the_ramp_is_fine() -> None:
    rig = running_rig()
    rig.tick(SetTarget(2.0))
    rig.run_ms(10_000)
    rig.press(Button.STOP)
    rig.measured_kmh = 0.3
    rig.tick()
    rig.measured_kmh = 0.0
    rig.tick()
    assert rig.core.mode is Mode.IDLE
    assert rig.core.fault is None


def test_SR_PLAUS_2_stop_ramp_allows_the_lag_until_it_reaches_zero() -> None:
    rig = stopping_rig()
    # Deviation 0.55 km/h for 2 s already: within 0.5 + 3.6 km/h/s x 1 s while ramping ...
    ramping = replace(rig.core, commanded_kmh=0.5, follow_since_ms=rig.now_ms - 2000)
    inputs = Inputs(True, True, False, True, status(rig.now_ms + 20, 1.05))
    decision = decide(ramping, inputs, DEFAULT_CONFIG, rig.now_ms + 20)
    assert decision.state.mode is Mode.STOPPING
    assert decision.state.follow_since_ms is None
    # ... but once the ramp is at 0 the belt must come to rest (0.1 km/h).
    ramp_done = replace(ramping, commanded_kmh=0.0)
    decision = decide(ramp_done, inputs, DEFAULT_CONFIG, rig.now_ms + 20)
    assert decision.state.fault is not None
    assert decision.state.fault.code is FaultCode.NOT_FOLLOWING


def test_SR_PLAUS_2_controlled_fault_upgrades_when_the_belt_does_not_slow() -> None:
    rig = running_rig()
    rig.tick(SetTarget(2.0))
    rig.run_ms(10_000)
    rig.link = "stale"
    rig.tick()
    rig.link = "fresh"
    assert rig.core.fault is not None
    assert rig.core.fault.stop is StopKind.CONTROLLED
    rig.measured_kmh = 2.0
    upgraded = rig.run_ms(3000)[-1].state
    assert upgraded.fault is not None
    assert upgraded.fault.code is FaultCode.NOT_FOLLOWING
    assert upgraded.fault.stop is StopKind.EMERGENCY
    assert upgraded.secondary_faults == (FaultCode.LINK_STALE,)
    assert rig.history[-1].motion == EStop()


def test_SR_PLAUS_3_belt_moving_while_idle_estops() -> None:
    rig = idle_rig()
    rig.measured_kmh = 0.4
    rig.run_ms(520)
    assert rig.core.mode is Mode.IDLE
    decision = rig.tick()
    assert decision.state.fault is not None
    assert decision.state.fault.code is FaultCode.MOVING_AT_REST
    assert decision.motion == EStop()
    assert "0.40 km/h for 520 ms while it should stand still (idle)" in (
        decision.state.fault.message
    )


def test_SR_PLAUS_3_belt_moving_again_after_a_fault_stop_upgrades_to_estop() -> None:
    rig = faulted_rig()
    assert rig.core.fault_rest_reached
    rig.measured_kmh = 0.4
    rig.run_ms(540)
    assert rig.core.fault is not None
    assert rig.core.fault.code is FaultCode.MOVING_AT_REST
    assert rig.history[-1].motion == EStop()


def test_SR_PLAUS_3_creep_at_or_below_standstill_is_rest() -> None:
    rig = idle_rig()
    rig.measured_kmh = DEFAULT_CONFIG.standstill_kmh
    rig.run_ms(5000)
    assert rig.core.fault is None


@pytest.mark.parametrize("reading", [math.nan, math.inf, -0.5])
def test_SR_PLAUS_4_invalid_speed_reading_stops_and_latches(reading: float) -> None:
    rig = running_rig()
    rig.measured_kmh = reading
    decision = rig.tick()
    assert decision.state.fault is not None
    assert decision.state.fault.code is FaultCode.NOT_FOLLOWING
    assert "is not a valid reading" in decision.state.fault.message
    assert decision.motion == Stop(DEFAULT_CONFIG.stop_decel_kmh_s)


# ---------------------------------------------------------------- firmware


#: FW-2's categories (docs/firmware-safety.md): the firmware cuts motor power at once for these
#: codes (key open, ESTOP, sensor, motor driver, overspeed, internal), so the controller's stop
#: is an emergency stop too; it ramps for the others (SR-FW-1).
CATEGORY_0_CODES = (5, 6, 7, 8, 10, 11)
CATEGORY_1_CODES = (1, 2, 3, 4, 9)


@pytest.mark.parametrize(
    ("fw_state", "fw_fault", "stop"),
    [
        *((FirmwareState.FAULT, code, StopKind.EMERGENCY) for code in CATEGORY_0_CODES),
        *((FirmwareState.FAULT, code, StopKind.CONTROLLED) for code in CATEGORY_1_CODES),
        (FirmwareState.RUNNING, 7, StopKind.EMERGENCY),  # the code counts, whatever the state
        (FirmwareState.RUNNING, 1, StopKind.CONTROLLED),
        (FirmwareState.FAULT, 0, StopKind.CONTROLLED),  # FAULT without a code: controlled
    ],
)
def test_SR_FW_1_firmware_fault_latches_with_the_right_stop(
    fw_state: FirmwareState, fw_fault: int, stop: StopKind
) -> None:
    rig = running_rig()
    rig.fw_state = fw_state
    rig.fw_fault = fw_fault
    decision = rig.tick()
    assert decision.state.fault is not None
    assert decision.state.fault.code is FaultCode.FIRMWARE_FAULT
    assert decision.state.fault.stop is stop
    assert decision.motion == (EStop() if stop is StopKind.EMERGENCY else Stop(3.6))
    assert f"fault code {fw_fault}" in decision.state.fault.message


def test_SR_FW_1_the_emergency_codes_are_the_firmware_category_0_faults() -> None:
    """One definition: the wire data dictionary's stop categories (FW-2) decide SR-FW-1."""
    assert frozenset(CATEGORY_0_CODES) == FIRMWARE_EMERGENCY_FAULT_CODES
    assert frozenset(CATEGORY_0_CODES) == {int(code) for code in CATEGORY_0_FAULTS}
    assert frozenset(CATEGORY_1_CODES) == {
        int(spec.code) for spec in FAULTS if spec.category is StopCategory.RAMP_THEN_CUT
    }


def test_SR_FW_2_firmware_reboot_latches() -> None:
    rig = running_rig()
    rig.boot_id = 8
    decision = rig.tick()
    assert decision.state.fault is not None
    assert decision.state.fault.code is FaultCode.FIRMWARE_REBOOT
    assert "boot id 7 -> 8" in decision.state.fault.message
    assert decision.motion == Stop(3.6)


def test_SR_FW_2_first_boot_id_is_adopted() -> None:
    rig = Rig(boot_id=42)
    rig.tick()
    assert rig.core.boot_id == 42
    assert rig.core.fault is None


def test_SR_FW_3_config_checksum_mismatch_latches() -> None:
    rig = idle_rig()
    rig.checksum = 0xDEAD
    decision = rig.tick()
    assert decision.state.fault is not None
    assert decision.state.fault.code is FaultCode.CONFIG_MISMATCH
    assert "0x0000dead differs from the one sent, 0x1234abcd" in decision.state.fault.message


# ---------------------------------------------------------------- faulted


def test_SR_FAULT_1_faulted_is_sticky_without_a_reset() -> None:
    rig = faulted_rig()
    for button in Button:
        if button is not Button.RESET:
            rig.press(button)
    rig.run_ms(10_000)
    assert rig.core.mode is Mode.FAULTED
    assert all(isinstance(d.motion, Stop) for d in rig.history[-500:])


def test_SR_FAULT_2_emergency_fault_after_a_controlled_one_upgrades_the_stop() -> None:
    rig = faulted_rig()
    rig.estop = True
    decision = rig.tick()
    assert decision.motion == EStop()
    fault_events = [e for e in decision.events if e.kind == "fault"]
    assert fault_events[0].details["upgraded_from"] == "grip_lost"
    assert "stop upgraded to an emergency stop; first fault: grip_lost" in (fault_events[0].message)


def test_SR_FAULT_2_controlled_fault_never_downgrades_an_emergency() -> None:
    rig = faulted_rig(running=False)
    rig.estop = True
    rig.link = "stale"
    decision = rig.tick()
    assert decision.motion == EStop()
    assert decision.state.fault is not None
    assert decision.state.fault.stop is StopKind.EMERGENCY
    assert decision.state.fault.code is FaultCode.ESTOP
    assert decision.state.secondary_faults == (FaultCode.LINK_STALE,)


def test_SR_FAULT_2_commanded_speed_models_the_stop_of_the_fault() -> None:
    controlled = running_rig()
    controlled.tick(SetTarget(2.0))
    controlled.run_ms(10_000)
    controlled.link = "stale"
    assert controlled.tick().state.commanded_kmh == pytest.approx(2.0 - 3.6 * 0.020)
    emergency = running_rig()
    emergency.estop = True
    assert emergency.tick().state.commanded_kmh == 0.0


def test_SR_FAULT_3_every_fault_message_says_what_to_do() -> None:
    assert set(FAULT_ADVICE) == set(FaultCode)
    assert all(advice and not advice.endswith(".") for advice in FAULT_ADVICE.values())
    rig = faulted_rig()
    assert rig.core.fault is not None
    assert rig.core.fault.message.endswith(". Hold the rails, then press RESET.")


@pytest.mark.parametrize("secondary", [False, True])
def test_SR_FAULT_4_reset_is_refused_while_internal_is_latched(secondary: bool) -> None:
    rig = running_rig()
    if secondary:
        rig.estop = True
        rig.tick()
        rig.estop = False
    decision = internal_fault(rig.core, DEFAULT_CONFIG, rig.now_ms + 1, "ValueError: boom")
    rig.state = decision.state
    rig.run_ms(3000)
    refused = rig.press(Button.RESET)
    assert refused.state.mode is Mode.FAULTED
    (event,) = [e for e in refused.events if e.kind == "reset_refused"]
    assert "an internal controller error is latched: read the log, then restart the service" in (
        event.message
    )


def test_SR_FAULT_4_internal_fault_latches_with_a_controlled_stop() -> None:
    rig = running_rig()
    before = rig.core
    decision = internal_fault(before, DEFAULT_CONFIG, rig.now_ms + 5, "KeyError in tick")
    assert decision.state == replace(
        before,
        mode=Mode.FAULTED,
        fault=decision.state.fault,
        stop_reason="internal",
        grip_lost_since_ms=None,
        grip_action_taken=False,
    )
    assert decision.state.fault == Fault(
        FaultCode.INTERNAL,
        "KeyError in tick. Internal controller error: read the log, then restart the service.",
        rig.now_ms + 5,
        StopKind.CONTROLLED,
    )
    assert decision.motion == Stop(3.6)
    assert not decision.clear_firmware_fault
    assert [e.kind for e in decision.events] == ["transition", "fault"]
    again = internal_fault(decision.state, DEFAULT_CONFIG, rig.now_ms + 6, "again")
    assert again.state == decision.state
    assert again.events == ()
    estopped = faulted_rig(running=False)
    estopped.estop = True  # e-stop still pressed: the emergency stop holds
    held = estopped.tick()
    assert internal_fault(held.state, DEFAULT_CONFIG, 0, "x").motion == EStop()
    # Released and at rest (SR-STOP-3): the latched emergency no longer repeats ESTOP.
    estopped.estop = False
    for _ in range(3):
        estopped.tick()
    assert internal_fault(estopped.core, DEFAULT_CONFIG, 0, "x").motion == Stop(3.6)


# ---------------------------------------------------------------- precedence


def test_SR_PREC_1_emergency_wins_over_stale_grip_and_buttons_in_one_tick() -> None:
    rig = running_rig()
    rig.estop = True
    rig.link = "stale"
    rig.grip = (False, False)
    decision = rig.tick(SetTarget(2.0))
    assert decision.motion == EStop()
    assert decision.state.fault is not None
    assert decision.state.fault.code is FaultCode.ESTOP
    assert decision.state.secondary_faults == (FaultCode.LINK_STALE,)
    assert decision.state.target_kmh == 0.5
    kinds = [e.kind for e in decision.events]
    assert kinds[:3] == ["transition", "fault", "fault"]


def test_SR_PREC_1_a_fault_in_the_tick_of_a_start_press_prevents_the_start() -> None:
    rig = idle_rig()
    rig.fw_fault = 8
    rig.fw_state = FirmwareState.FAULT
    decision = rig.press(Button.START)
    assert decision.state.mode is Mode.FAULTED
    assert not any(e.kind == "started" for e in decision.events)


def test_SR_PREC_1_two_faults_keep_the_first_and_record_the_second() -> None:
    config = make_config(*DEFAULT_CONFIG.stages)
    rig = running_rig(config)
    rig.boot_id = 9
    rig.checksum = 1
    decision = rig.tick()
    assert decision.state.fault is not None
    assert decision.state.fault.code is FaultCode.FIRMWARE_REBOOT
    assert decision.state.secondary_faults == (FaultCode.CONFIG_MISMATCH,)
