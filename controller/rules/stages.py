"""Stages and their limits: the current stage, its speed limit, the stage and speed caps, and
the stage changes that follow a lowered cap (SR-SPEED-1, SR-STAGE-4, SR-GRIP-3, SR-GRIP-8).
"""

from __future__ import annotations

from controller.rules.model import (
    CoreState,
    GripLossAction,
    Inputs,
    Mode,
    SafetyConfig,
    StageConfig,
)
from controller.rules.tick import Step, replace


def stage_config(state: CoreState, config: SafetyConfig) -> StageConfig:
    """The configuration of the state's current stage."""
    return config.stages[state.stage - 1]


def stage_limit_kmh(stage: StageConfig, config: SafetyConfig) -> float:
    """Highest speed allowed at ``stage``: min(stage max, machine max) (SR-SPEED-1)."""
    return min(stage.max_kmh, config.machine_max_kmh)


def effective_stage_cap(state: CoreState, inputs: Inputs, config: SafetyConfig) -> int:
    """Highest stage allowed now: training cap, remote cap and stage count (SR-STAGE-4).

    A training cap below 1 counts as 1: stage 1 is the most restrictive stage there is.
    """
    cap = min(max(inputs.stage_cap, 1), len(config.stages))
    if state.remote_stage_cap is not None:
        cap = min(cap, state.remote_stage_cap)
    return cap


def speed_cap_kmh(state: CoreState, config: SafetyConfig) -> float:
    """Highest target now: the stage limit, or the grip-slow speed after grip loss (SR-GRIP-3)."""
    stage = stage_config(state, config)
    cap = stage_limit_kmh(stage, config)
    if state.grip_action_taken and stage.on_grip_loss is GripLossAction.SLOW:
        cap = min(cap, stage.grip_slow_kmh)
    return cap


def change_stage(step: Step, new_stage: int, reason: str) -> None:
    """Move to ``new_stage``; the target follows its limits at once (SR-STAGE-*, SR-GRIP-8)."""
    state = step.state
    config = step.config
    old_number = state.stage
    old_name = (
        config.stages[old_number - 1].name
        if old_number <= len(config.stages)
        else "not in the configuration"
    )
    stage = config.stages[new_stage - 1]
    limit = stage_limit_kmh(stage, config)
    if state.mode is Mode.IDLE:
        target = min(stage.start_kmh, limit)
    else:
        target = min(state.target_kmh, limit)
    # A new stage brings a new grip policy: its action is due again (the loss time is kept).
    step.state = replace(step.state, stage=new_stage, target_kmh=target, grip_action_taken=False)
    step.emit(
        "stage_changed",
        f"stage {old_number} ({old_name}) -> stage {stage.number} ({stage.name}) ({reason}): "
        f"limit {limit:.1f} km/h, target {target:.2f} km/h",
        from_stage=old_number,
        to_stage=stage.number,
        reason=reason,
        limit_kmh=limit,
        target_kmh=target,
    )


def apply_stage_caps(step: Step, reason: str) -> None:
    """A training or remote cap below the current stage lowers it at once (SR-STAGE-4)."""
    cap = effective_stage_cap(step.state, step.inputs, step.config)
    if step.state.stage > cap:
        change_stage(step, cap, reason)
