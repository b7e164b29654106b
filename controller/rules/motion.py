"""The speed ramp and the motion command: the tick's time step, the commanded speed's goal and
rates, the wire resolution and the one command per tick (SR-SPEED-2, SR-SPEED-3,
SR-MOTION-1, SR-MOTION-2, SR-STOP-3).
"""

from __future__ import annotations

from typing import Final

from controller.rules.model import (
    CoreState,
    EStop,
    Mode,
    MotionCommand,
    SafetyConfig,
    SetSpeed,
    StageConfig,
    Stop,
    StopKind,
)
from controller.rules.stages import speed_cap_kmh, stage_config
from controller.rules.tick import Step, replace

MAX_TICK_DT_MS: Final = 100
"""Longest time step one tick may ramp over (SR-SPEED-3): a pause never produces a jump."""


WIRE_SPEED_RESOLUTION_KMH: Final = 0.01
"""Resolution of SET_SPEED's speed on the wire (docs/protocol.md; a drift test ties the two).
Rising or falling is decided on the wire value, as the firmware sees it (SR-MOTION-2)."""


def wire_speed_kmh(speed_kmh: float) -> float:
    """``speed_kmh`` as SET_SPEED carries it on the wire (rounded to 0.01 km/h)."""
    return round(speed_kmh / WIRE_SPEED_RESOLUTION_KMH) * WIRE_SPEED_RESOLUTION_KMH


def tick_dt_ms(last_tick_ms: int | None, now_ms: int) -> int:
    """Milliseconds to ramp over in this tick: clamped to [0, MAX_TICK_DT_MS] (SR-SPEED-3)."""
    if last_tick_ms is None:
        return 0
    return min(max(now_ms - last_tick_ms, 0), MAX_TICK_DT_MS)


def _ramp_goal_kmh(state: CoreState, config: SafetyConfig) -> float:
    """Where the commanded speed is heading while RUNNING: the target within [0, speed cap]."""
    return max(0.0, min(state.target_kmh, speed_cap_kmh(state, config)))


def ramp_rate_kmh_s(state: CoreState, config: SafetyConfig) -> float:
    """Rate at which the commanded speed is moving now (for the follow lag allowance)."""
    if state.mode is Mode.RUNNING:
        stage = stage_config(state, config)
        goal_kmh = _ramp_goal_kmh(state, config)
        if state.commanded_kmh < goal_kmh:
            return stage.accel_kmh_s
        if state.commanded_kmh > goal_kmh:
            return stage.decel_kmh_s
        return 0.0
    return config.stop_decel_kmh_s  # STOPPING or FAULTED: the stop ramp


def ramp(step: Step, dt_ms: int) -> None:
    """Move the commanded speed toward its goal within the rate limits (SR-SPEED-2)."""
    state = step.state
    config = step.config
    dt_s = dt_ms / 1000.0
    commanded_kmh = state.commanded_kmh
    if state.mode is Mode.RUNNING:
        stage = stage_config(state, config)
        goal_kmh = _ramp_goal_kmh(state, config)
        if commanded_kmh < goal_kmh:
            commanded_kmh = min(goal_kmh, commanded_kmh + stage.accel_kmh_s * dt_s)
        else:
            commanded_kmh = max(goal_kmh, commanded_kmh - stage.decel_kmh_s * dt_s)
        commanded_kmh = min(commanded_kmh, config.machine_max_kmh)
    elif state.mode is Mode.STOPPING or (
        state.fault is not None and state.fault.stop is StopKind.CONTROLLED
    ):
        commanded_kmh = max(0.0, commanded_kmh - config.stop_decel_kmh_s * dt_s)
    else:
        commanded_kmh = 0.0
    step.state = replace(step.state, commanded_kmh=commanded_kmh)


def motion_command(
    state: CoreState,
    config: SafetyConfig,
    previous_kmh: float,
    setpoint_kmh: float | None = None,
) -> MotionCommand:
    """Exactly one motion command per tick, chosen by mode (SR-MOTION-1).

    ``setpoint_kmh`` is the firmware's own ramped set-point from its latest usable STATUS
    (None without one: the speed last sent stands for it). The firmware judges a SET_SPEED's
    rate against its *present* set-point (FW-4), which lags behind the speed last sent while
    it ramps toward it (SR-MOTION-2).
    """
    if state.mode is Mode.RUNNING:
        stage = stage_config(state, config)
        return SetSpeed(
            speed_kmh=state.commanded_kmh,
            accel_kmh_s=_wire_rate_kmh_s(stage, state.commanded_kmh, previous_kmh, setpoint_kmh),
            lease_ms=config.lease_ms,
        )
    return stop_command(state, config)


def _wire_rate_kmh_s(
    stage: StageConfig, speed_kmh: float, previous_kmh: float, setpoint_kmh: float | None
) -> float:
    """The ramp rate SET_SPEED carries: one that FW-4 accepts whichever way the firmware
    judges it (SR-MOTION-2).

    Decided on wire values, as the firmware sees them: a change below the resolution reaches
    it as its present set-point, which it treats as holding. The present set-point lies
    between the one last reported and the speed last sent (it ramps from one toward the
    other), so a speed below both is a deceleration for the firmware, a speed above both an
    acceleration; anything else (holding, or a speed between the two: just below a rising
    speed, just above a falling one) may be judged either way and carries the lower rate.
    """
    wire_kmh = wire_speed_kmh(speed_kmh)
    sent_kmh = wire_speed_kmh(previous_kmh)
    reported_kmh = sent_kmh if setpoint_kmh is None else wire_speed_kmh(setpoint_kmh)
    if wire_kmh < min(sent_kmh, reported_kmh):
        return stage.decel_kmh_s
    if wire_kmh > max(sent_kmh, reported_kmh):
        return stage.accel_kmh_s
    return min(stage.accel_kmh_s, stage.decel_kmh_s)


def stop_command(state: CoreState, config: SafetyConfig) -> MotionCommand:
    """EStop for a fault whose stop is an emergency until the belt is at rest; otherwise, and
    from then on, the controlled Stop (SR-STOP-3). Repeating ESTOP at rest would re-latch the
    firmware's own ESTOP fault after every CLEAR_FAULT, and a reset could never complete."""
    if (
        state.fault is not None
        and state.fault.stop is StopKind.EMERGENCY
        and not state.fault_rest_reached
    ):
        return EStop()
    return Stop(decel_kmh_s=config.stop_decel_kmh_s)
