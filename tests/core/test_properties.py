"""Hypothesis properties over the numbers, and a state machine over random input sequences."""

from __future__ import annotations

import math
from dataclasses import replace

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from controller.rules.config_rules import check_safety_config
from controller.rules.core import decide, initial_state
from controller.rules.model import (
    Button,
    CoreState,
    Decision,
    EStop,
    FirmwareState,
    GripLossAction,
    Inputs,
    LocalCommand,
    Mode,
    Press,
    RemoteCommand,
    RemoteLowerStageCap,
    RemoteLowerTarget,
    RemoteStop,
    RequestStop,
    SafetyConfig,
    SelectStage,
    SetSpeed,
    SetTarget,
    Stop,
    StopKind,
)
from controller.rules.motion import MAX_TICK_DT_MS
from controller.rules.stages import stage_limit_kmh
from tests.core.support import CHECKSUM, Rig, make_config, running_rig, stage, status

EPS = 1e-9
PROPERTY_SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@st.composite
def stage_tables(draw: st.DrawFn) -> SafetyConfig:
    """A valid one-stage configuration with random speeds, rates and grace."""
    max_kmh = draw(st.floats(0.5, 16.0))
    config = make_config(
        stage(
            1,
            max_kmh=max_kmh,
            start_kmh=draw(st.floats(0.11, max_kmh)),
            accel_kmh_s=draw(st.floats(0.01, 3.6)),
            decel_kmh_s=draw(st.floats(0.01, 3.6)),
            grace_ms=draw(st.integers(0, 2000)),
        ),
        machine_max_kmh=draw(st.floats(max_kmh, 25.0)),
    )
    assert check_safety_config(config) == []
    return config


# ---------------------------------------------------------------- properties over numbers


@PROPERTY_SETTINGS
@given(
    config=stage_tables(),
    steps=st.lists(
        st.tuples(st.integers(-100, 5000), st.floats(-5.0, 30.0, allow_nan=False)),
        min_size=1,
        max_size=40,
    ),
)
def test_SR_SPEED_2_property_commanded_within_limit_and_rate(
    config: SafetyConfig, steps: list[tuple[int, float]]
) -> None:
    rig = running_rig(config, settle=False)
    stage_cfg = config.stages[0]
    limit = stage_limit_kmh(stage_cfg, config)
    for dt_ms, target in steps:
        before = rig.core.commanded_kmh
        rig.tick(SetTarget(target), dt_ms=dt_ms)
        after = rig.core.commanded_kmh
        assert 0.0 <= after <= limit + EPS
        step_s = min(max(dt_ms, 0), MAX_TICK_DT_MS) / 1000
        assert after - before <= stage_cfg.accel_kmh_s * step_s + EPS
        if rig.core.mode is Mode.RUNNING:
            assert before - after <= stage_cfg.decel_kmh_s * step_s + EPS


@PROPERTY_SETTINGS
@given(config=stage_tables(), released_ticks=st.integers(1, 150))
def test_SR_GRIP_2_property_latch_exactly_when_the_grace_has_passed(
    config: SafetyConfig, released_ticks: int
) -> None:
    rig = running_rig(config, settle=False)
    grace_ms = config.stages[0].grip_grace_ms
    rig.grip = (False, False)
    for _ in range(released_ticks):
        rig.tick()
    # The release is first seen at the first tick; the last tick is (n - 1) * 20 ms later.
    released_ms = (released_ticks - 1) * 20
    assert (rig.core.mode is Mode.FAULTED) == (released_ms >= grace_ms)


@PROPERTY_SETTINGS
@given(
    config=stage_tables(),
    excess_kmh=st.floats(-3.0, 3.0),
    lasting_ticks=st.integers(1, 60),
)
def test_SR_PLAUS_1_property_overspeed_only_beyond_margin_and_time(
    config: SafetyConfig, excess_kmh: float, lasting_ticks: int
) -> None:
    rig = running_rig(config, settle=False)
    limit = stage_limit_kmh(config.stages[0], config)
    # Running steadily at the limit (what a long ramp would reach).
    rig.state = replace(rig.core, target_kmh=limit, commanded_kmh=limit)
    margin = max(config.overspeed_abs_kmh, config.overspeed_rel * limit)
    measured = limit + margin + excess_kmh
    assume(measured >= 0.0 and abs(excess_kmh) > 1e-6)
    rig.measured_kmh = measured
    # The reading has stood at this value: no acceleration, so SR-PLAUS-5 stays out of it.
    rig.state = replace(
        rig.core, speed_samples=((rig.now_ms - 150, measured), (rig.now_ms - 50, measured))
    )
    for _ in range(lasting_ticks):
        rig.tick()
    lasted_ms = (lasting_ticks - 1) * 20
    fault = rig.core.fault
    overspeed = fault is not None and fault.code.value == "overspeed"
    assert overspeed == (excess_kmh > 0 and lasted_ms > config.overspeed_ms)


@PROPERTY_SETTINGS
@given(
    config=stage_tables(),
    now_ms=st.integers(-(10**12), 10**12),
    gap_ms=st.integers(-(10**6), 10**9),
)
def test_SR_SPEED_3_property_any_time_step_ramps_at_most_one_max_step(
    config: SafetyConfig, now_ms: int, gap_ms: int
) -> None:
    rig = running_rig(config, settle=False)
    state = replace(rig.core, last_tick_ms=now_ms)
    firmware = status(now_ms + gap_ms, state.commanded_kmh)
    inputs = Inputs(True, True, False, True, firmware)
    decision = decide(state, inputs, config, now_ms + gap_ms)
    step_kmh = decision.state.commanded_kmh - state.commanded_kmh
    assert step_kmh <= config.stages[0].accel_kmh_s * MAX_TICK_DT_MS / 1000 + EPS


# ---------------------------------------------------------------- the state machine

MACHINE_CONFIG = make_config(
    stage(1, max_kmh=2.0, accel_kmh_s=0.5, decel_kmh_s=0.8, hands=1, grace_ms=300),
    stage(
        2,
        max_kmh=3.5,
        accel_kmh_s=0.8,
        decel_kmh_s=1.0,
        hands=2,
        action=GripLossAction.SLOW,
        grace_ms=200,
        slow_kmh=1.0,
    ),
    stage(3, max_kmh=5.5, accel_kmh_s=1.0, decel_kmh_s=1.2, action=GripLossAction.WARN),
    stage(4, max_kmh=8.0, accel_kmh_s=1.5, decel_kmh_s=1.5, hands=0, action=GripLossAction.NONE),
    grip_stuck_window_ms=3000,
)

local_commands = st.one_of(
    st.sampled_from([Press(button) for button in Button]),
    st.builds(SetTarget, st.floats(-1.0, 12.0) | st.just(math.nan)),
    st.builds(SelectStage, st.integers(0, 5)),
    st.builds(RequestStop, st.just("session_complete")),
)
remote_commands = st.one_of(
    st.just(RemoteStop()),
    st.builds(RemoteLowerTarget, st.floats(-1.0, 12.0)),
    st.builds(RemoteLowerStageCap, st.integers(0, 5)),
)


class CoreMachine(RuleBasedStateMachine):
    """Random sequences of inputs and times; every invariant is checked after every step."""

    def __init__(self) -> None:
        super().__init__()
        self.config = MACHINE_CONFIG
        self.state: CoreState = initial_state(self.config)
        self.now_ms = 10_000
        self.before: CoreState = self.state
        self.decision: Decision | None = None
        self.inputs: Inputs | None = None
        self.dt_ms = 0
        self.grip_lost_since_ms: int | None = None

    @initialize()
    def first_tick(self) -> None:
        rig = Rig(config=self.config, now_ms=self.now_ms)
        self._step(rig.inputs(), 20)

    @rule(
        dt_ms=st.integers(20, 20) | st.integers(-30, 400),
        grip=st.tuples(st.booleans(), st.booleans()),
        estop=st.sampled_from([False] * 19 + [True]),
        key=st.sampled_from([True] * 19 + [False]),
        link=st.sampled_from(["fresh"] * 8 + ["stale", "none"]),
        fw_fault=st.sampled_from([0] * 8 + [6, 8]),
        measured=st.sampled_from(["ideal"] * 6 + ["zero", "random"]),
        random_kmh=st.floats(0.0, 12.0),
        boot_id=st.sampled_from([7] * 15 + [8]),
        checksum=st.sampled_from([CHECKSUM] * 15 + [1]),
        local=st.lists(local_commands, max_size=3),
        remote=st.lists(remote_commands, max_size=2),
        stage_cap=st.sampled_from([4, 4, 4, 3, 2, 1, 0]),
    )
    def tick(  # noqa: PLR0917  # Hypothesis passes each drawn input by keyword; one per knob
        self,
        dt_ms: int,
        grip: tuple[bool, bool],
        estop: bool,
        key: bool,
        link: str,
        fw_fault: int,
        measured: str,
        random_kmh: float,
        boot_id: int,
        checksum: int,
        local: list[LocalCommand],
        remote: list[RemoteCommand],
        stage_cap: int,
    ) -> None:
        now_ms = self.now_ms + dt_ms
        firmware = None
        if link != "none":
            measured_kmh = {
                "ideal": self.state.commanded_kmh,
                "zero": 0.0,
                "random": random_kmh,
            }[measured]
            firmware = status(
                now_ms if link == "fresh" else now_ms - 600,
                measured_kmh,
                state=FirmwareState.FAULT if fw_fault else FirmwareState.IDLE,
                fault_code=fw_fault,
                boot_id=boot_id,
                checksum=checksum,
            )
        inputs = Inputs(
            grip_left=grip[0],
            grip_right=grip[1],
            estop_pressed=estop,
            safety_key_present=key,
            firmware=firmware,
            local=tuple(local),
            remote=tuple(remote),
            stage_cap=stage_cap,
        )
        self._step(inputs, dt_ms)

    @rule(ticks=st.integers(1, 40), grip=st.tuples(st.booleans(), st.booleans()))
    def steady(self, ticks: int, grip: tuple[bool, bool]) -> None:
        """Quiet ticks with an ideal belt: lets ramps, timers and stops run their course."""
        for _ in range(ticks):
            firmware = status(self.now_ms + 20, self.state.commanded_kmh)
            self._step(Inputs(grip[0], grip[1], False, True, firmware, stage_cap=4), 20)

    def _step(self, inputs: Inputs, dt_ms: int) -> None:
        self.before = self.state
        self.now_ms += dt_ms
        self.dt_ms = dt_ms
        self.inputs = inputs
        self.decision = decide(self.state, inputs, self.config, self.now_ms)
        self.state = self.decision.state
        self._check_step()

    def _check_step(self) -> None:
        decision, inputs, before, after = self.decision, self.inputs, self.before, self.state
        assert decision is not None
        assert inputs is not None
        config = self.config
        stage_cfg = config.stages[after.stage - 1]
        limit = stage_limit_kmh(stage_cfg, config)
        # Exactly one motion command, the one the mode demands (SR-MOTION-1).
        motion = decision.motion
        if after.mode is Mode.RUNNING:
            assert isinstance(motion, SetSpeed)
            assert motion.speed_kmh == after.commanded_kmh
        elif (
            after.fault is not None
            and after.fault.stop is StopKind.EMERGENCY
            and not after.fault_rest_reached
        ):
            assert motion == EStop()  # until at rest with the e-stop released (SR-STOP-3)
        elif after.fault is not None and after.fault.stop is StopKind.EMERGENCY:
            assert not inputs.estop_pressed
            assert inputs.safety_key_present
            assert motion == Stop(config.stop_decel_kmh_s)
        else:
            assert motion == Stop(config.stop_decel_kmh_s)
        # Commanded never above the limit except while ramping down to it (SR-SPEED-1).
        assert 0.0 <= after.commanded_kmh <= max(limit, before.commanded_kmh) + EPS
        # Rate never above the stage's limits (SR-SPEED-2).
        if before.mode is Mode.RUNNING and after.mode is Mode.RUNNING:
            step_s = min(max(self.dt_ms, 0), MAX_TICK_DT_MS) / 1000
            assert after.commanded_kmh - before.commanded_kmh <= (
                stage_cfg.accel_kmh_s * step_s + EPS
            )
            assert before.commanded_kmh - after.commanded_kmh <= (
                stage_cfg.decel_kmh_s * step_s + EPS
            )
        # No start without a local press (SR-START-1).
        if after.mode is Mode.RUNNING and before.mode is not Mode.RUNNING:
            assert before.mode is Mode.IDLE
            assert Press(Button.START) in inputs.local
        # No exit from FAULTED without a valid local reset (SR-RESET-1, SR-RESET-2).
        if before.mode is Mode.FAULTED and after.mode is not Mode.FAULTED:
            firmware = inputs.firmware
            assert after.mode is Mode.IDLE
            # A RESET pressed now, or one pressed earlier that waited for the firmware to
            # clear its fault (SR-RESET-3); every reset condition holds in this tick.
            assert Press(Button.RESET) in inputs.local or before.reset_armed_ms is not None
            assert not inputs.estop_pressed
            assert inputs.safety_key_present
            assert firmware is not None
            assert self.now_ms - firmware.received_ms <= config.stale_ms
            assert firmware.fault_code == 0
            assert firmware.state is not FirmwareState.FAULT
            assert firmware.measured_kmh <= config.standstill_kmh
            assert firmware.safety_key_closed
        # Grip loss past grace at a stop-latch stage always stops the belt (SR-GRIP-2).
        grip_ok = int(inputs.grip_left) + int(inputs.grip_right) >= stage_cfg.grip_hands_required
        watched_stop = (
            stage_cfg.on_grip_loss is GripLossAction.STOP_LATCH
            and stage_cfg.grip_hands_required > 0
        )
        if (
            before.mode is Mode.RUNNING
            and before.stage == after.stage
            and watched_stop
            and not grip_ok
        ):
            if self.grip_lost_since_ms is None:
                self.grip_lost_since_ms = self.now_ms
            if self.now_ms - self.grip_lost_since_ms >= stage_cfg.grip_grace_ms:
                assert after.mode is not Mode.RUNNING
        else:
            self.grip_lost_since_ms = None
        if after.mode is not Mode.RUNNING:
            self.grip_lost_since_ms = None
        # Every mode change is reported (SR-MODE-1).
        if after.mode is not before.mode:
            assert any(e.kind == "transition" for e in decision.events)

    @invariant()
    def target_within_the_stage_limit(self) -> None:
        stage_cfg = self.config.stages[self.state.stage - 1]
        assert 0.0 <= self.state.target_kmh <= stage_limit_kmh(stage_cfg, self.config) + EPS


TestSRMachineRandomSequences = CoreMachine.TestCase
TestSRMachineRandomSequences.settings = settings(
    max_examples=80,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
