"""Rules SR-STOP-*, SR-RESET-* and SR-REMOTE-* of docs/safety.md."""

from __future__ import annotations

from dataclasses import replace

import pytest

from controller.rules.grip import WARNING_GRIP_SUSPECT
from controller.rules.model import (
    Button,
    FaultCode,
    FirmwareState,
    Mode,
    Press,
    RemoteCommand,
    RemoteLowerStageCap,
    RemoteLowerTarget,
    RemoteStop,
    RequestStop,
    SelectStage,
    SetSpeed,
    SetTarget,
    Stop,
)
from controller.rules.readiness import reset_blockers
from controller.rules.reset import RESET_CLEAR_TIMEOUT_MS
from tests.core.support import (
    DEFAULT_CONFIG,
    faulted_rig,
    idle_rig,
    running_rig,
    stopping_rig,
)

# ---------------------------------------------------------------- stops


@pytest.mark.parametrize(
    ("command", "reason"),
    [
        (Press(Button.STOP), "stop_button"),
        (RequestStop("session_complete"), "session_complete"),
        (None, "remote_stop"),
    ],
)
def test_SR_STOP_1_stop_requests_ramp_down_with_their_reason(
    command: Press | RequestStop | None, reason: str
) -> None:
    rig = running_rig()
    decision = rig.tick(command) if command is not None else rig.tick(remote=(RemoteStop(),))
    assert decision.state.mode is Mode.STOPPING
    assert decision.state.stop_reason == reason
    assert decision.motion == Stop(DEFAULT_CONFIG.stop_decel_kmh_s)
    assert decision.events[0].message == f"running -> stopping ({reason})"


def test_SR_STOP_2_stopping_becomes_idle_once_at_rest() -> None:
    rig = running_rig()
    rig.tick(SetTarget(1.5))
    rig.run_ms(6000)
    rig.press(Button.STOP)
    rig.measured_kmh = 0.2
    rig.tick()
    assert rig.core.mode is Mode.STOPPING
    rig.measured_kmh = 0.1
    decision = rig.tick()
    assert decision.state.mode is Mode.IDLE
    assert decision.state.commanded_kmh == 0.0
    assert decision.state.target_kmh == 0.5
    stopped = [e for e in decision.events if e.kind == "stopped"]
    assert "stop reason: stop_button" in stopped[0].message


def test_SR_STOP_2_stopping_waits_for_a_fresh_reading() -> None:
    rig = stopping_rig()
    rig.measured_kmh = 0.0
    rig.link = "stale"
    decision = rig.tick()
    assert decision.state.mode is Mode.FAULTED
    assert decision.state.fault is not None
    assert decision.state.fault.code is FaultCode.LINK_STALE


@pytest.mark.parametrize(
    "command",
    [Press(Button.STOP), RequestStop("x")],
)
def test_SR_STOP_3_stop_requests_never_change_idle_stopping_or_faulted(
    command: Press | RequestStop,
) -> None:
    for rig in (idle_rig(), stopping_rig(), faulted_rig()):
        mode = rig.core.mode
        decision = rig.tick(command)
        assert decision.state.mode is mode
        assert decision.events == ()


# ---------------------------------------------------------------- reset


def test_SR_RESET_1_only_a_local_reset_leaves_faulted() -> None:
    rig = faulted_rig()
    remotes: tuple[RemoteCommand, ...] = (
        RemoteStop(),
        RemoteLowerTarget(0.1),
        RemoteLowerStageCap(1),
    )
    rig.tick(remote=remotes)
    assert rig.core.mode is Mode.FAULTED
    decision = rig.press(Button.RESET)
    assert decision.state.mode is Mode.IDLE
    assert [e.kind for e in decision.events] == ["transition", "fault_cleared"]
    assert decision.events[0].message == "faulted -> idle (reset)"


@pytest.mark.parametrize(
    ("knob", "value", "reason"),
    [
        ("estop", True, "the e-stop is pressed"),
        ("key", False, "the safety key is out"),
        ("fw_key", False, "reads the safety key circuit open"),
        ("link", "stale", "501 ms old"),
        ("link", "none", "no firmware status"),
        ("measured_kmh", 0.5, "the belt is moving (0.50 km/h measured"),
        ("checksum", 1, "configuration checksum"),
    ],
)
def test_SR_RESET_2_reset_refused_names_what_is_wrong(
    knob: str, value: object, reason: str
) -> None:
    rig = faulted_rig()
    setattr(rig, knob, value)
    decision = rig.press(Button.RESET)
    assert decision.state.mode is Mode.FAULTED
    assert not decision.clear_firmware_fault
    refused = [e for e in decision.events if e.kind == "reset_refused"]
    assert len(refused) == 1
    assert reason in refused[0].message


def test_SR_RESET_2_chattering_grip_sensor_blocks_a_reset_at_a_grip_stage() -> None:
    rig = faulted_rig()
    state = rig.core
    chattering = replace(state, warnings=frozenset({WARNING_GRIP_SUSPECT}))
    blockers = reset_blockers(chattering, rig.inputs(), DEFAULT_CONFIG, rig.now_ms)
    assert blockers == (
        "the grip sensors are chattering: check the rail sensors and keep the hands still",
    )
    at_stage_4 = replace(chattering, stage=4)
    assert reset_blockers(at_stage_4, rig.inputs(), DEFAULT_CONFIG, rig.now_ms) == ()


def test_SR_RESET_3_one_reset_clears_the_firmware_fault_then_completes() -> None:
    rig = faulted_rig(running=False)  # our EStop latched the firmware's own ESTOP fault
    rig.fw_state = FirmwareState.FAULT
    rig.fw_fault = 6
    rig.tick()
    first = rig.press(Button.RESET)
    assert first.clear_firmware_fault
    assert first.state.mode is Mode.FAULTED
    assert first.state.reset_armed_ms == rig.now_ms
    pending = [e for e in first.events if e.kind == "reset_pending"]
    assert "completes as soon as it has cleared" in pending[0].message
    follow_up = rig.tick()  # the firmware has not cleared yet: still waiting, sent once
    assert not follow_up.clear_firmware_fault
    assert follow_up.state.mode is Mode.FAULTED
    rig.fw_state = FirmwareState.IDLE
    rig.fw_fault = 0
    done = rig.tick()  # no second press
    assert done.state.mode is Mode.IDLE
    assert done.state.reset_armed_ms is None
    assert done.state.fault is None
    assert [e.kind for e in done.events if e.kind == "fault_cleared"] == ["fault_cleared"]
    assert not isinstance(done.motion, SetSpeed)  # a reset never starts the belt (SR-RESET-4)


def test_SR_RESET_3_a_second_press_while_waiting_completes_or_waits_again() -> None:
    rig = faulted_rig(running=False)
    rig.fw_state = FirmwareState.FAULT
    rig.fw_fault = 6
    rig.tick()
    rig.press(Button.RESET)
    again = rig.press(Button.RESET)  # still faulted: CLEAR_FAULT once more, waiting again
    assert again.clear_firmware_fault
    assert again.state.reset_armed_ms == rig.now_ms
    rig.fw_state = FirmwareState.IDLE
    rig.fw_fault = 0
    assert rig.press(Button.RESET).state.mode is Mode.IDLE


def test_SR_RESET_3_waiting_reset_refused_when_a_condition_fails_or_time_runs_out() -> None:
    # A condition fails while waiting (the e-stop is pressed again): refused, nothing armed.
    rig = faulted_rig(running=False)
    rig.fw_state = FirmwareState.FAULT
    rig.fw_fault = 6
    rig.tick()
    rig.press(Button.RESET)
    rig.estop = True
    refused = rig.tick()
    assert refused.state.mode is Mode.FAULTED
    assert refused.state.reset_armed_ms is None
    assert [e.kind for e in refused.events] == ["reset_refused"]
    rig.estop = False
    rig.fw_state = FirmwareState.IDLE
    rig.fw_fault = 0
    assert rig.tick().state.mode is Mode.FAULTED  # needs a new press
    # The firmware does not clear within the timeout: refused, says what to do.
    rig = faulted_rig(running=False)
    rig.fw_state = FirmwareState.FAULT
    rig.fw_fault = 8
    rig.tick()
    armed = rig.press(Button.RESET).state.reset_armed_ms
    assert armed is not None
    decision = rig.tick()
    while rig.now_ms - armed <= RESET_CLEAR_TIMEOUT_MS:
        assert decision.state.reset_armed_ms == armed
        decision = rig.tick()
    assert decision.state.mode is Mode.FAULTED
    assert decision.state.reset_armed_ms is None
    (event,) = [e for e in decision.events if e.kind == "reset_refused"]
    assert event.message == (
        f"reset refused: the motor controller still reports fault code 8 "
        f"{RESET_CLEAR_TIMEOUT_MS} ms after CLEAR_FAULT: read its fault code in the log, fix "
        "the cause, then press RESET."
    )


def test_SR_RESET_3_a_refused_second_press_disarms_the_waiting_reset() -> None:
    """A RESET refused while another waits for CLEAR_FAULT cancels the waiting one: the
    machine never leaves FAULTED later without a new press."""
    rig = faulted_rig(running=False)
    rig.fw_state = FirmwareState.FAULT
    rig.fw_fault = 6
    rig.tick()
    assert rig.press(Button.RESET).state.reset_armed_ms is not None
    rig.estop = True
    refused = rig.press(Button.RESET)
    assert [e.kind for e in refused.events] == ["reset_refused"]
    assert refused.state.reset_armed_ms is None
    rig.estop = False
    rig.fw_state = FirmwareState.IDLE
    rig.fw_fault = 0
    later = rig.tick()
    assert later.state.mode is Mode.FAULTED
    assert later.state.fault is not None


@pytest.mark.parametrize("new_fault", ["config_mismatch", "firmware_reboot"])
def test_SR_RESET_3_a_new_fault_while_waiting_cancels_the_reset(new_fault: str) -> None:
    """A fault of its own latched while a RESET waits for CLEAR_FAULT is never cleared by
    that RESET, even when the firmware clears in the same tick: RESET must be pressed again."""
    rig = faulted_rig(running=False)
    rig.fw_state = FirmwareState.FAULT
    rig.fw_fault = 6
    rig.tick()
    rig.press(Button.RESET)
    if new_fault == "config_mismatch":
        rig.checksum = rig.checksum + 1
    else:  # the motor controller restarts: its own fault is gone, nothing blocks a reset
        rig.boot_id = rig.boot_id + 1
        rig.fw_state = FirmwareState.IDLE
        rig.fw_fault = 0
    decision = rig.tick()
    assert decision.state.reset_armed_ms is None
    assert decision.state.mode is Mode.FAULTED
    assert FaultCode(new_fault) in decision.state.secondary_faults
    assert [e.kind for e in decision.events] == ["fault"]
    assert rig.tick().state.mode is Mode.FAULTED
    if new_fault == "firmware_reboot":
        assert rig.press(Button.RESET).state.mode is Mode.IDLE  # a new press clears it


def test_SR_RESET_3_firmware_in_fault_state_without_a_code_is_cleared_too() -> None:
    for fw_state, fw_fault in ((FirmwareState.FAULT, 0), (FirmwareState.IDLE, 8)):
        rig = faulted_rig(running=False)
        rig.fw_state = fw_state
        rig.fw_fault = fw_fault
        rig.tick()
        decision = rig.press(Button.RESET)
        assert decision.clear_firmware_fault
        assert decision.state.mode is Mode.FAULTED


def test_SR_RESET_4_reset_never_starts_the_belt() -> None:
    rig = running_rig()
    rig.tick(SetTarget(1.8))
    rig.run_ms(8000)
    rig.grip = (False, False)
    rig.run_ms(400)
    rig.grip = (True, True)
    rig.run_ms(2000)
    decision = rig.press(Button.RESET)
    assert decision.state.mode is Mode.IDLE
    assert decision.state.commanded_kmh == 0.0
    assert decision.state.target_kmh == 0.5
    assert decision.motion == Stop(DEFAULT_CONFIG.stop_decel_kmh_s)
    later = rig.run_ms(2000)
    assert all(d.state.mode is Mode.IDLE for d in later)


def test_SR_RESET_4_reset_adopts_the_new_boot_id() -> None:
    rig = idle_rig()
    rig.boot_id = 99
    rig.tick()
    assert rig.core.fault is not None
    assert rig.core.fault.code is FaultCode.FIRMWARE_REBOOT
    assert rig.press(Button.RESET).state.mode is Mode.IDLE
    assert rig.core.boot_id == 99
    rig.run_ms(200)
    assert rig.core.mode is Mode.IDLE


def test_SR_RESET_4_reset_clears_the_fault_record() -> None:
    rig = faulted_rig()
    rig.link = "stale"
    rig.tick()
    rig.link = "fresh"
    rig.press(Button.RESET)
    assert rig.core.fault is None
    assert rig.core.stop_reason is None
    assert rig.core.secondary_faults == ()
    assert rig.core.fault_rest_reached is False


def test_SR_RESET_5_reset_in_idle_clears_the_remote_stage_cap() -> None:
    rig = idle_rig(stage_number=3)
    rig.tick(remote=(RemoteLowerStageCap(2),))
    assert rig.core.remote_stage_cap == 2
    assert rig.tick(SelectStage(3)).events[0].kind == "command_rejected"
    decision = rig.press(Button.RESET)
    assert decision.state.remote_stage_cap is None
    assert "remote stage cap 2 cleared" in decision.events[0].message
    assert rig.tick(SelectStage(3)).state.stage == 3
    assert rig.press(Button.RESET).events == ()


def test_SR_RESET_5_reset_while_running_does_nothing() -> None:
    rig = running_rig()
    rig.tick(remote=(RemoteLowerStageCap(1),))
    assert rig.core.remote_stage_cap == 1
    decision = rig.press(Button.RESET)
    assert decision.events == ()
    assert decision.state.mode is Mode.RUNNING
    assert decision.state.remote_stage_cap == 1


# ---------------------------------------------------------------- remote


def test_SR_REMOTE_1_remote_stop_is_always_honoured_and_never_downgrades() -> None:
    rig = running_rig()
    assert rig.tick(remote=(RemoteStop(),)).state.mode is Mode.STOPPING
    faulted = faulted_rig()
    decision = faulted.tick(remote=(RemoteStop(),))
    assert decision.state.mode is Mode.FAULTED
    assert decision.state.fault == faulted.history[-2].state.fault


def test_SR_REMOTE_2_remote_target_only_lowers() -> None:
    rig = running_rig()
    rig.tick(SetTarget(1.5))
    accepted = rig.tick(remote=(RemoteLowerTarget(1.0),))
    assert accepted.state.target_kmh == 1.0
    assert accepted.events[0].message == "target 1.50 -> 1.00 km/h (remote)"
    for value in (1.0, 1.2, -0.1, float("nan")):
        decision = rig.tick(remote=(RemoteLowerTarget(value),))
        assert decision.state.target_kmh == 1.0
        assert decision.events[0].kind == "command_rejected"
        assert "may only lower it" in decision.events[0].message


@pytest.mark.parametrize("local", [False, True])
def test_SR_REMOTE_2_negative_zero_is_reported_as_zero(local: bool) -> None:
    rig = running_rig()
    decision = rig.tick(SetTarget(-0.0)) if local else rig.tick(remote=(RemoteLowerTarget(-0.0),))
    assert decision.state.target_kmh == 0.0
    assert str(decision.state.target_kmh) == "0.0"  # not -0.0
    changed = [e for e in decision.events if e.kind == "target_changed"]
    assert changed[0].message.endswith(
        "-> 0.00 km/h (" + ("console target)" if local else "remote)")
    )
    assert "-0.00" not in changed[0].message
    assert decision.state.mode is Mode.STOPPING  # a zero target is a stop (SR-SPEED-5)


@pytest.mark.parametrize("faulted", [False, True])
def test_SR_STAGE_6_reload_with_fewer_stages_while_idle_or_faulted_clamps_the_stage(
    faulted: bool,
) -> None:
    rig = idle_rig(stage_number=4)
    if faulted:
        rig.estop = True
        rig.tick()
        rig.estop = False
        assert rig.core.mode is Mode.FAULTED
    rig.config = replace(DEFAULT_CONFIG, stages=DEFAULT_CONFIG.stages[:2])
    decision = rig.tick()
    assert decision.state.stage == 2
    (changed,) = [e for e in decision.events if e.kind == "stage_changed"]
    assert changed.message.startswith(
        "stage 4 (not in the configuration) -> stage 2 (supported backward walk) "
        "(stage not in the reloaded configuration)"
    )
    assert decision.state.mode is (Mode.FAULTED if faulted else Mode.IDLE)


def test_SR_REMOTE_3_remote_stage_cap_only_lowers_and_applies_at_once() -> None:
    rig = running_rig(stage_number=3)
    decision = rig.tick(remote=(RemoteLowerStageCap(2),))
    assert decision.state.remote_stage_cap == 2
    assert decision.state.stage == 2
    assert [e.kind for e in decision.events] == ["stage_cap_changed", "stage_changed"]
    for value in (2, 3, 0):
        rejected = rig.tick(remote=(RemoteLowerStageCap(value),))
        assert rejected.state.remote_stage_cap == 2
        assert rejected.events[0].kind == "command_rejected"


def test_SR_REMOTE_3_remote_cap_above_the_stage_keeps_the_stage() -> None:
    rig = idle_rig()
    rig.stage_cap = 4
    decision = rig.tick(remote=(RemoteLowerStageCap(3),))
    assert decision.state.remote_stage_cap == 3
    assert decision.state.stage == 1
    assert rig.tick(SelectStage(4)).events[0].kind == "command_rejected"


def test_SR_REMOTE_4_no_remote_sequence_raises_anything() -> None:
    rig = idle_rig(stage_number=2)
    before = rig.core
    remotes: tuple[RemoteCommand, ...] = (
        RemoteLowerTarget(5.0),
        RemoteLowerStageCap(4),
        RemoteStop(),
        RemoteLowerTarget(0.2),
        RemoteLowerStageCap(1),
    )
    for remote in remotes:
        decision = rig.tick(remote=(remote,))
        assert decision.state.mode is Mode.IDLE
        assert decision.state.target_kmh <= before.target_kmh
        assert decision.state.stage <= before.stage
    assert rig.core.stage == 1


# ------------------------------------------------------------------ SR-FAULT-6


def test_SR_FAULT_6_estop_consequences_fold_into_the_first_cause_then_one_reset() -> None:
    """The e-stop opens the motor power chain: the firmware reads its safety-key circuit open
    and latches fault 5. One cause is reported; one RESET clears both latches."""
    rig = running_rig()
    rig.estop = True
    first = rig.tick()
    assert [e.details.get("code") for e in first.events if e.kind == "fault"] == ["estop"]
    rig.fw_key = False
    rig.fw_state = FirmwareState.FAULT
    rig.fw_fault = 5
    rig.measured_kmh = 0.0
    consequences = rig.tick()
    assert [e.kind for e in consequences.events] == ["fault_folded", "fault_folded"]
    assert {e.details["cause"] for e in consequences.events} == {"estop"}
    state = consequences.state
    assert state.fault is not None
    assert state.fault.code is FaultCode.ESTOP  # the first cause stays the reported one
    assert set(state.secondary_faults) == {FaultCode.SAFETY_KEY, FaultCode.FIRMWARE_FAULT}
    rig.estop = False
    rig.fw_key = True  # the chain closes again; the firmware keeps its latch
    rig.run_ms(200)
    pressed = rig.press(Button.RESET)
    assert pressed.clear_firmware_fault
    rig.fw_state = FirmwareState.IDLE
    rig.fw_fault = 0
    done = rig.tick()
    assert done.state.mode is Mode.IDLE
    assert done.state.secondary_faults == ()


@pytest.mark.parametrize(
    ("first", "fw_fault", "folded"),
    [
        ("estop", 5, True),
        ("key", 5, True),
        ("estop", 6, True),  # the firmware's ESTOP latch: our own EStop
        ("estop", 8, False),  # a motor fault is a fault of its own
        ("link", 5, False),  # a link fault does not open the power chain
        ("link", 6, False),  # ... and sends Stop, not EStop
    ],
)
def test_SR_FAULT_6_only_consequences_of_the_latched_cause_are_folded(
    first: str, fw_fault: int, folded: bool
) -> None:
    rig = running_rig()
    if first == "estop":
        rig.estop = True
    elif first == "key":
        rig.key = False
    else:
        rig.link = "stale"
    rig.tick()
    rig.link = "fresh"
    rig.fw_state = FirmwareState.FAULT
    rig.fw_fault = fw_fault
    decision = rig.tick()
    kinds = [e.kind for e in decision.events if e.kind in ("fault", "fault_folded")]
    assert kinds == (["fault_folded"] if folded else ["fault"])


def test_SR_FAULT_6_a_consequence_never_hides_a_stop_upgrade() -> None:
    """A controlled first cause (stale link) and then the key circuit open: the emergency
    stop upgrade is reported as a fault, not folded (the power-chain causes that fold it are
    emergency faults themselves)."""
    rig = running_rig()
    rig.link = "stale"
    rig.tick()
    rig.link = "fresh"
    rig.fw_key = False
    decision = rig.tick()
    (fault,) = [e for e in decision.events if e.kind == "fault"]
    assert fault.details["upgraded_from"] == "link_stale"
