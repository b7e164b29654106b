"""Every combination of the discrete inputs, from every reachable mode, against every invariant.

Each test item fixes a starting state (built by driving the core itself) and a grip policy,
then runs one tick for each combination of grip x key x e-stop x link x firmware fault x
button, and checks the invariants below. About 83,000 ticks in all.

Invariants (rule ids in docs/safety.md):
- exactly one motion command, of the type the mode demands (SR-MOTION-1);
- the commanded speed stays within [0, limit] except while ramping down, and its rate of
  change within the stage's acceleration and deceleration (SR-SPEED-1, SR-SPEED-2);
- e-stop or a missing key gives EStop and FAULTED (SR-ESTOP-1, SR-ESTOP-2);
- a stale or missing status, or a firmware fault, leaves the core FAULTED (SR-STALE-1, SR-FW-1);
- the belt starts only from IDLE on a local START with every condition met (SR-START-1/2);
- a reset never starts the belt; FAULTED is left only by a valid local reset (SR-RESET-*);
- grip lost past its grace at a stop-latch stage never leaves the belt running (SR-GRIP-2);
- every mode change is reported as a transition event (SR-MODE-1).
"""

from __future__ import annotations

import itertools
from dataclasses import replace
from functools import cache

import pytest

from controller.rules.core import decide, initial_state
from controller.rules.model import (
    Button,
    CoreState,
    EStop,
    FirmwareState,
    GripLossAction,
    Inputs,
    Mode,
    Press,
    SafetyConfig,
    SetSpeed,
    SetTarget,
    Stop,
    StopKind,
)
from controller.rules.stages import stage_limit_kmh
from tests.core.support import BOOT_ID, Rig, make_config, stage, status

GRIPS = [(False, False), (True, False), (False, True), (True, True)]
KEYS = ["present", "console_out", "firmware_out"]
LINKS = ["fresh", "stale", "none"]
BUTTONS: list[Button | None] = [None, *Button]
POLICIES = list(itertools.product(GripLossAction, (0, 1, 2)))
START_MODES = [
    "idle",
    "running",
    "running_grip_due",  # grip released for exactly the grace time minus one tick
    "stopping",
    "faulted_controlled",
    "faulted_emergency",
]
TICK_MS = 20
EPS = 1e-9


def _config(action: GripLossAction, hands: int) -> SafetyConfig:
    """Stage 2 carries the policy under test; stage 1 is there to lower to."""
    return make_config(
        stage(1, max_kmh=2.0, accel_kmh_s=0.2, decel_kmh_s=0.4),
        stage(
            2,
            max_kmh=3.0,
            accel_kmh_s=0.3,
            decel_kmh_s=0.5,
            hands=hands,
            action=action,
            grace_ms=200,
            slow_kmh=0.8,
        ),
    )


@cache
def _start_state(mode: str, action: GripLossAction, hands: int) -> tuple[CoreState, int]:
    """A state reached through the core itself, and the time of its last tick."""
    config = _config(action, hands)
    rig = Rig(config=config, stage_cap=2)
    rig.tick()
    rig.tick(Press(Button.STAGE_UP))
    assert rig.core.stage == 2
    if mode == "idle":
        return rig.core, rig.now_ms
    if mode == "faulted_emergency":
        rig.estop = True
        rig.tick()
        rig.estop = False
        rig.run_ms(200)
        return rig.core, rig.now_ms
    assert rig.press(Button.START).state.mode is Mode.RUNNING
    rig.tick(SetTarget(1.5))
    rig.run_ms(6000)
    if mode == "running":
        return rig.core, rig.now_ms
    if mode == "running_grip_due":
        rig.grip = (False, False)
        rig.run_ms(200 - TICK_MS)
        return rig.core, rig.now_ms
    if mode == "stopping":
        rig.press(Button.STOP)
        return rig.core, rig.now_ms
    rig.link = "stale"
    rig.tick()
    return rig.core, rig.now_ms


def _inputs(  # noqa: PLR0917  # one positional per dimension of the product, in order
    state: CoreState,
    now_ms: int,
    grip: tuple[bool, bool],
    key: str,
    estop: bool,
    link: str,
    fw_fault: bool,
    button: Button | None,
) -> Inputs:
    firmware = None
    if link != "none":
        received = now_ms if link == "fresh" else now_ms - 501
        firmware = status(
            received,
            state.commanded_kmh,
            state=FirmwareState.FAULT if fw_fault else FirmwareState.IDLE,
            fault_code=8 if fw_fault else 0,
            key_closed=key != "firmware_out",
            boot_id=BOOT_ID,
        )
    return Inputs(
        grip_left=grip[0],
        grip_right=grip[1],
        estop_pressed=estop,
        safety_key_present=key != "console_out",
        firmware=firmware,
        local=() if button is None else (Press(button),),
        stage_cap=2,
    )


@pytest.mark.parametrize(("action", "hands"), POLICIES, ids=str)
@pytest.mark.parametrize("start_mode", START_MODES)
def test_SR_EXHAUSTIVE_every_input_combination_keeps_every_invariant(
    start_mode: str, action: GripLossAction, hands: int
) -> None:
    config = _config(action, hands)
    before, last_ms = _start_state(start_mode, action, hands)
    now_ms = last_ms + TICK_MS
    count = 0
    for grip, key, estop, link, fw_fault, button in itertools.product(
        GRIPS, KEYS, (False, True), LINKS, (False, True), BUTTONS
    ):
        inputs = _inputs(before, now_ms, grip, key, estop, link, fw_fault, button)
        decision = decide(before, inputs, config, now_ms)
        after = decision.state
        case = (start_mode, grip, key, estop, link, fw_fault, button)
        _check_invariants(config, before, after, decision.motion, inputs, button, case)
        kinds = [e.kind for e in decision.events]
        if after.mode is not before.mode:
            assert "transition" in kinds, case
        count += 1
    assert count == 4 * 3 * 2 * 3 * 2 * 8


def _check_invariants(  # noqa: PLR0917  # the tick's before/after and what drove it
    config: SafetyConfig,
    before: CoreState,
    after: CoreState,
    motion: object,
    inputs: Inputs,
    button: Button | None,
    case: object,
) -> None:
    # SR-MOTION-1: exactly one motion command, the one the mode demands.
    if after.mode is Mode.RUNNING:
        assert isinstance(motion, SetSpeed), case
        assert motion.speed_kmh == after.commanded_kmh, case
        assert motion.lease_ms == config.lease_ms, case
    elif after.mode is Mode.FAULTED:
        assert after.fault is not None, case
        # SR-STOP-3: an emergency sends ESTOP while the e-stop is pressed, the key is out or
        # the belt has not yet come to rest; after that a plain Stop lets CLEAR_FAULT work.
        fw = inputs.firmware
        emergency_input = (
            inputs.estop_pressed
            or not inputs.safety_key_present
            or (fw is not None and not fw.safety_key_closed)
        )
        if emergency_input:
            assert not after.fault_rest_reached, case
        emergency = after.fault.stop is StopKind.EMERGENCY and not after.fault_rest_reached
        expected = EStop() if emergency else Stop(3.6)
        assert motion == expected, case
    else:
        assert motion == Stop(config.stop_decel_kmh_s), case
        assert after.fault is None, case

    # SR-SPEED-1 / SR-SPEED-2: limits and rates.
    stage = config.stages[after.stage - 1]
    limit = stage_limit_kmh(stage, config)
    assert 0.0 <= after.commanded_kmh <= max(limit, before.commanded_kmh) + EPS, case
    assert 0.0 <= after.target_kmh <= limit + EPS, case
    if before.mode is Mode.RUNNING and after.mode is Mode.RUNNING:
        dt_s = TICK_MS / 1000
        assert after.commanded_kmh - before.commanded_kmh <= stage.accel_kmh_s * dt_s + EPS
        assert before.commanded_kmh - after.commanded_kmh <= stage.decel_kmh_s * dt_s + EPS

    firmware = inputs.firmware
    key_out = not inputs.safety_key_present or (
        firmware is not None and not firmware.safety_key_closed
    )
    # SR-ESTOP-1 / SR-ESTOP-2
    if inputs.estop_pressed or key_out:
        assert after.mode is Mode.FAULTED, case
        assert motion == EStop(), case
    # SR-STALE-1 / SR-FW-1
    fresh = firmware is not None and firmware.received_ms == after.last_tick_ms
    if not fresh or (firmware is not None and firmware.fault_code != 0):
        assert after.mode is Mode.FAULTED, case
    # SR-START-1 / SR-START-2: a start needs IDLE, START and every condition.
    if after.mode is Mode.RUNNING and before.mode is not Mode.RUNNING:
        assert before.mode is Mode.IDLE, case
        assert button is Button.START, case
        assert fresh, case
        assert not key_out, case
        assert not inputs.estop_pressed, case
        hands = int(inputs.grip_left) + int(inputs.grip_right)
        assert hands >= stage.grip_hands_required, case
    # SR-RESET-4: a reset never starts the belt.
    if button is Button.RESET and before.mode is not Mode.RUNNING:
        assert after.mode is not Mode.RUNNING, case
    # SR-RESET-1 / SR-FAULT-1: FAULTED is left only by a valid local reset.
    if before.mode is Mode.FAULTED and after.mode is not Mode.FAULTED:
        assert after.mode is Mode.IDLE, case
        assert button is Button.RESET, case
        assert fresh, case
        assert not key_out, case
        assert not inputs.estop_pressed, case
        assert firmware is not None, case
        assert firmware.fault_code == 0, case
    # SR-GRIP-2: grip lost past grace at a stop-latch stage never leaves the belt running.
    grip_ok = int(inputs.grip_left) + int(inputs.grip_right) >= stage.grip_hands_required
    if (
        before.grip_lost_since_ms is not None
        and after.last_tick_ms is not None
        and after.last_tick_ms - before.grip_lost_since_ms >= stage.grip_grace_ms
        and stage.on_grip_loss is GripLossAction.STOP_LATCH
        and stage.grip_hands_required > 0
        and not grip_ok
    ):
        assert after.mode is not Mode.RUNNING, case


def test_SR_EXHAUSTIVE_start_states_are_the_intended_ones() -> None:
    for action, hands in POLICIES:
        modes = {name: _start_state(name, action, hands)[0] for name in START_MODES}
        assert modes["idle"].mode is Mode.IDLE
        assert modes["running"].mode is Mode.RUNNING
        assert modes["running"].commanded_kmh == 1.5
        assert modes["stopping"].mode is Mode.STOPPING
        assert modes["faulted_controlled"].mode is Mode.FAULTED
        assert modes["faulted_emergency"].mode is Mode.FAULTED
        fault = modes["faulted_emergency"].fault
        assert fault is not None
        assert fault.stop is StopKind.EMERGENCY
        due = modes["running_grip_due"]
        if hands > 0 and action is not GripLossAction.NONE:
            assert due.grip_lost_since_ms is not None
        if action is GripLossAction.STOP_LATCH and hands > 0:
            assert due.mode is Mode.RUNNING
    assert replace(initial_state(_config(GripLossAction.NONE, 0))).mode is Mode.IDLE
