"""The core's commands against the wire and the firmware's contract.

* SR-CONFIG-3: every configuration ``check_safety_config`` accepts produces only commands the
  wire can carry (each one encodes without error).
* SR-MOTION-2 / FW-4: rising or falling is decided on the speed as it goes on the wire, so a
  change below the 0.01 km/h resolution is never sent as a deceleration that the firmware
  would check against its acceleration ceiling.
* SR-STAGE-6: a reload to a table with fewer stages never raises; the stage is clamped.
"""

from __future__ import annotations

from dataclasses import replace

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from controller.rules.config_rules import check_safety_config
from controller.rules.model import (
    Button,
    EStop,
    GripLossAction,
    Mode,
    MotionCommand,
    Press,
    RemoteLowerTarget,
    SafetyConfig,
    SelectStage,
    SetSpeed,
    SetTarget,
    StageConfig,
    Stop,
)
from controller.rules.motion import WIRE_SPEED_RESOLUTION_KMH, wire_speed_kmh
from firmware_bridge.wire import messages
from firmware_bridge.wire.codec import encode_frame
from tests.core.support import TICK_MS, Rig, running_rig, single_stage_config

# Rates from just below what the checker accepts to just above, edges included.
RATES = st.one_of(
    st.sampled_from([0.005, 0.0099, 0.01, 0.011, 0.014, 0.015, 0.025, 3.6, 3.61]),
    st.floats(min_value=0.0, max_value=3.7),
)


def _encode(motion: MotionCommand) -> bytes:
    """The bytes the bridge would send (raises MessageError when the wire cannot carry it)."""
    if isinstance(motion, SetSpeed):
        message: messages.Message = messages.SetSpeed(
            speed_kmh=motion.speed_kmh, accel_kmh_s=motion.accel_kmh_s, lease_ms=motion.lease_ms
        )
    elif isinstance(motion, Stop):
        message = messages.Stop(decel_kmh_s=motion.decel_kmh_s)
    else:
        assert isinstance(motion, EStop)
        message = messages.EStop()
    return encode_frame(1, message)


@st.composite
def safety_configs(draw: st.DrawFn) -> SafetyConfig:
    machine_max_kmh = draw(st.floats(min_value=0.3, max_value=25.0))
    count = draw(st.integers(min_value=1, max_value=4))
    stages = []
    for number in range(1, count + 1):
        max_kmh = draw(st.floats(min_value=0.2, max_value=machine_max_kmh))
        stages.append(
            StageConfig(
                number=number,
                name=f"stage {number}",
                max_kmh=max_kmh,
                start_kmh=draw(st.floats(min_value=0.11, max_value=max_kmh)),
                accel_kmh_s=draw(RATES),
                decel_kmh_s=draw(RATES),
                grip_hands_required=0,
                on_grip_loss=GripLossAction.NONE,
                grip_grace_ms=0,
                clip_required=True,
            )
        )
    stages.sort(key=lambda s: s.max_kmh)
    stages = [replace(s, number=i + 1) for i, s in enumerate(stages)]
    return SafetyConfig(
        stages=tuple(stages),
        machine_max_kmh=machine_max_kmh,
        stop_decel_kmh_s=draw(
            st.one_of(st.sampled_from([1.0, 10.8]), st.floats(min_value=1.0, max_value=10.8))
        ),
        lease_ms=draw(st.integers(min_value=50, max_value=500)),
        speed_step_kmh=draw(st.floats(min_value=0.001, max_value=1.0)),
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(
    config=safety_configs(),
    targets=st.lists(st.floats(min_value=0.0, max_value=30.0), min_size=1, max_size=6),
    buttons=st.lists(st.sampled_from([Button.FASTER, Button.SLOWER, Button.STOP]), max_size=6),
)
def test_SR_CONFIG_3_property_every_command_of_an_accepted_config_encodes(
    config: SafetyConfig, targets: list[float], buttons: list[Button]
) -> None:
    assume(check_safety_config(config) == [])
    rig = Rig(config=config, grip=(False, False))
    rig.tick()
    for number in range(len(config.stages), 0, -1):
        rig.tick(SelectStage(number))  # from the top stage down: every stage's rates
        rig.press(Button.START)
        for target, button in zip(targets, [*buttons, *[None] * len(targets)], strict=False):
            _encode(rig.tick(SetTarget(target)).motion)
            for decision in rig.run_ms(100):
                _encode(decision.motion)
            if button is not None:
                _encode(rig.press(button).motion)
        if rig.core.mode is Mode.RUNNING:
            _encode(rig.press(Button.STOP).motion)
        for decision in rig.run_ms(200):
            _encode(decision.motion)
        rig.state = replace(rig.core, mode=Mode.IDLE, commanded_kmh=0.0)  # next stage at rest


def _firmware_accepts(speed_kmh: float, rate_kmh_s: float, setpoint_kmh: float) -> bool:
    """FW-4 as the simulator implements it, with the demo ceilings (1.0 up, 3.6 down)."""
    wire_speed = wire_speed_kmh(speed_kmh)
    if wire_speed < wire_speed_kmh(setpoint_kmh):
        return rate_kmh_s <= 3.6
    return rate_kmh_s <= 1.0


@settings(max_examples=200, deadline=None)
@given(
    steady_kmh=st.floats(min_value=0.5, max_value=2.0),
    lower_by_kmh=st.floats(min_value=0.0, max_value=0.5),
    remote=st.booleans(),
)
def test_SR_MOTION_2_property_the_wire_value_decides_rising_or_falling(
    steady_kmh: float, lower_by_kmh: float, remote: bool
) -> None:
    """A belt steady at any speed, any lowered target: every SET_SPEED passes FW-4."""
    config = single_stage_config(max_kmh=2.0, accel_kmh_s=0.2, decel_kmh_s=3.6)
    rig = running_rig(config)
    rig.state = replace(rig.core, target_kmh=steady_kmh, commanded_kmh=steady_kmh)
    rig.tick()  # steady: the firmware holds this speed as its set-point
    setpoint_kmh = wire_speed_kmh(rig.core.commanded_kmh)  # what the firmware holds
    target = rig.core.target_kmh - lower_by_kmh
    if remote:
        decisions = [rig.tick(remote=(RemoteLowerTarget(target),))]
    else:
        decisions = [rig.tick(SetTarget(target))]
    decisions += rig.run_ms(1000)
    for decision in decisions:
        motion = decision.motion
        if not isinstance(motion, SetSpeed):
            continue
        assert _firmware_accepts(motion.speed_kmh, motion.accel_kmh_s, setpoint_kmh), (
            motion,
            setpoint_kmh,
        )
        setpoint_kmh = wire_speed_kmh(motion.speed_kmh)


def test_SR_MOTION_2_lowering_below_the_resolution_is_sent_as_holding() -> None:
    """The reported case: console 1.0 -> 0.999 with the belt steady."""
    config = single_stage_config(max_kmh=2.0, accel_kmh_s=0.2, decel_kmh_s=3.6)
    rig = running_rig(config)
    rig.tick(SetTarget(1.0))
    rig.run_ms(10_000)
    decision = rig.tick(SetTarget(0.999))
    assert isinstance(decision.motion, SetSpeed)
    assert decision.state.commanded_kmh < 1.0  # the core's own speed did fall ...
    assert wire_speed_kmh(decision.motion.speed_kmh) == 1.0  # ... not the wire's
    assert decision.motion.accel_kmh_s == 0.2  # so it is holding, at the acceleration
    assert messages.SetSpeed.FIELDS[0].scale ** -1 == WIRE_SPEED_RESOLUTION_KMH


# ---------------------------------------------------------------- SR-STAGE-6


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(
    before=safety_configs(),
    after=safety_configs(),
    mode=st.sampled_from(["idle", "running", "faulted"]),
)
def test_SR_STAGE_6_property_a_reload_never_raises_and_clamps_the_stage(
    before: SafetyConfig, after: SafetyConfig, mode: str
) -> None:
    assume(check_safety_config(before) == [] and check_safety_config(after) == [])
    rig = Rig(config=before, grip=(False, False))
    rig.tick()
    rig.tick(SelectStage(len(before.stages)))
    if mode != "idle":
        rig.press(Button.START)
        rig.run_ms(200)
    if mode == "faulted":
        rig.estop = True
        rig.tick()
        rig.estop = False
    rig.config = after  # the service swaps the config between two ticks
    decisions = [rig.tick(Press(Button.STAGE_UP)), *rig.run_ms(5 * TICK_MS)]
    for decision in decisions:
        assert 1 <= decision.state.stage <= len(after.stages)
        _encode(decision.motion)
    if rig.core.stage != decisions[0].state.stage:
        return
    if len(after.stages) < len(before.stages):
        changed = [e for e in decisions[0].events if e.kind == "stage_changed"]
        assert changed
        assert "not in the reloaded configuration" in changed[0].message
