"""The grip interlock: hands on the rails, the chattering and stuck sensor warnings, the grace
timer and each stage's action on grip loss (SR-GRIP-1..10).
"""

from __future__ import annotations

from typing import Final

from controller.rules.faults import FAULT_ADVICE, latch
from controller.rules.model import FaultCode, GripLossAction, Inputs, Mode, StageConfig, StopKind
from controller.rules.stages import stage_config
from controller.rules.tick import Step, replace

WARNING_GRIP_SUSPECT: Final = "grip_sensor_suspect"
"""Warning flag: the grip sensors chatter (SR-GRIP-6)."""


WARNING_GRIP_STUCK: Final = "grip_sensor_stuck"
"""Warning flag: the grip reading has not changed for a long time while running (SR-GRIP-7)."""


def hands_on_rails(inputs: Inputs) -> int:
    """Number of hands the grip sensors report on the rails (0, 1 or 2)."""
    return int(inputs.grip_left) + int(inputs.grip_right)


def grip_ok(stage: StageConfig, inputs: Inputs) -> bool:
    """True when at least ``grip_hands_required`` hands are on the rails (SR-GRIP-1).

    At a warn-only stage where grip is optional (no hands required), the warning is about
    having no hand on a rail at all, so there grip counts as held with one hand or two.
    """
    return hands_on_rails(inputs) >= _hands_watched(stage)


def _hands_watched(stage: StageConfig) -> int:
    """Hands whose loss counts at ``stage``: the hands required, or one at a warn-only stage
    without a requirement (SR-GRIP-1)."""
    if stage.grip_hands_required == 0 and stage.on_grip_loss is GripLossAction.WARN:
        return 1
    return stage.grip_hands_required


def grip_watched(stage: StageConfig) -> bool:
    """True when losing grip has a consequence at ``stage`` (SR-GRIP-1, SR-GRIP-4)."""
    return _hands_watched(stage) > 0 and stage.on_grip_loss is not GripLossAction.NONE


def hands_text(count: int) -> str:
    """``one hand`` or ``2 hands``, as a start condition names them (SR-START-2)."""
    return "one hand" if count == 1 else f"{count} hands"


def grip_text(inputs: Inputs) -> str:
    """Both grip readings as shown in a message: ``left held, right released``."""
    left = "held" if inputs.grip_left else "released"
    right = "held" if inputs.grip_right else "released"
    return f"left {left}, right {right}"


def track_grip_sensor(step: Step) -> None:
    """Count grip edges and flag a chattering or stuck sensor (SR-GRIP-6, SR-GRIP-7)."""
    state = step.state
    config = step.config
    now_ms = step.now_ms
    reading = (step.inputs.grip_left, step.inputs.grip_right)
    previous = state.last_grip_hands if state.last_grip_hands is not None else reading
    flips = int(reading[0] != previous[0]) + int(reading[1] != previous[1])
    changed_ms = state.grip_changed_ms
    if flips > 0 or changed_ms is None:
        changed_ms = now_ms
    window_ms = config.grip_chatter_window_ms
    edges = (*(t for t in state.grip_edges_ms if now_ms - t < window_ms), *([now_ms] * flips))
    edges = edges[-config.grip_chatter_edges :]
    warnings = set(state.warnings)
    if len(edges) >= config.grip_chatter_edges:
        if WARNING_GRIP_SUSPECT not in warnings:
            warnings.add(WARNING_GRIP_SUSPECT)
            step.emit(
                "grip_sensor_suspect",
                f"grip sensors changed {len(edges)} times within {window_ms} ms: the sensor "
                "is unreliable. Check the rail sensors and their wiring; keep the hands still.",
                edges=len(edges),
                window_ms=window_ms,
            )
    else:
        warnings.discard(WARNING_GRIP_SUSPECT)
    stage = stage_config(state, config)
    unchanged_ms = now_ms - changed_ms
    if flips > 0:
        warnings.discard(WARNING_GRIP_STUCK)
    elif (
        state.mode is Mode.RUNNING
        and grip_watched(stage)
        and unchanged_ms >= config.grip_stuck_window_ms
        and WARNING_GRIP_STUCK not in warnings
    ):
        warnings.add(WARNING_GRIP_STUCK)
        step.emit(
            "grip_sensor_stuck",
            f"grip reading unchanged for {unchanged_ms // 1000} s while running "
            f"({grip_text(step.inputs)}): if the hands moved, check the rail sensors.",
            unchanged_ms=unchanged_ms,
        )
    step.state = replace(
        step.state,
        last_grip_hands=reading,
        grip_changed_ms=changed_ms,
        grip_edges_ms=edges,
        warnings=frozenset(warnings),
        last_grip_ok=grip_ok(stage, step.inputs),
    )


def check_grip(step: Step) -> None:
    """Grace timer and the stage's action on grip loss, while RUNNING (SR-GRIP-2..6, 10)."""
    stage = stage_config(step.state, step.config)
    held = grip_ok(stage, step.inputs)
    held_since_ms = step.state.grip_held_since_ms if held else None
    if held and held_since_ms is None:
        held_since_ms = step.now_ms
    step.state = replace(step.state, grip_held_since_ms=held_since_ms)
    state = step.state
    if state.mode is not Mode.RUNNING or not grip_watched(stage):
        step.state = replace(step.state, grip_lost_since_ms=None, grip_action_taken=False)
        return
    if WARNING_GRIP_SUSPECT in state.warnings and stage.on_grip_loss is GripLossAction.STOP_LATCH:
        latch(
            step,
            FaultCode.GRIP_SENSOR,
            StopKind.CONTROLLED,
            f"Grip sensors chattering at stage {stage.number}, where grip loss stops the belt: "
            "the grip reading cannot be trusted",
        )
        return
    if held_since_ms is not None:
        if (
            state.grip_lost_since_ms is not None
            and step.now_ms - held_since_ms < step.config.grip_regrip_ms
        ):
            # A touch is not yet a hold: the loss goes on (its grace keeps running), but
            # nothing acts while a hand is on the rail (SR-GRIP-10).
            return
        if state.grip_action_taken:
            step.emit(
                "grip_restored",
                f"grip back at stage {stage.number} ({grip_text(step.inputs)}): "
                "the speed may be raised again.",
                stage=stage.number,
            )
        step.state = replace(step.state, grip_lost_since_ms=None, grip_action_taken=False)
        return
    since_ms = state.grip_lost_since_ms if state.grip_lost_since_ms is not None else step.now_ms
    step.state = replace(step.state, grip_lost_since_ms=since_ms)
    lost_ms = step.now_ms - since_ms
    if state.grip_action_taken or lost_ms < stage.grip_grace_ms:
        return
    _act_on_grip_loss(step, stage, lost_ms)


def _act_on_grip_loss(step: Step, stage: StageConfig, lost_ms: int) -> None:
    """The grace is over: the stage's action on grip loss, once (SR-GRIP-2..4): stop and
    latch, slow to ``grip_slow_kmh``, or warn."""
    seen = (
        f"Grip released for {lost_ms} ms at stage {stage.number} ({stage.name}; "
        f"{hands_text(stage.grip_hands_required)} required, grace {stage.grip_grace_ms} ms; "
        f"{grip_text(step.inputs)})"
    )
    details: dict[str, str | int | float | bool | None] = {
        "stage": stage.number,
        "lost_ms": lost_ms,
        "grace_ms": stage.grip_grace_ms,
        "action": stage.on_grip_loss.value,
    }
    if stage.on_grip_loss is GripLossAction.STOP_LATCH:
        step.emit(
            "grip_lost", f"{seen}: belt stopping. {FAULT_ADVICE[FaultCode.GRIP_LOST]}.", **details
        )
        latch(step, FaultCode.GRIP_LOST, StopKind.CONTROLLED, seen)
        return
    step.state = replace(step.state, grip_action_taken=True)
    if stage.on_grip_loss is GripLossAction.SLOW:
        target_kmh = min(step.state.target_kmh, stage.grip_slow_kmh)
        step.state = replace(step.state, target_kmh=target_kmh)
        step.emit(
            "grip_lost",
            f"{seen}: slowing to {target_kmh:.2f} km/h. Hold the rails; then raise the speed "
            "again if you wish.",
            **details,
        )
        return
    step.emit("grip_warning", f"{seen}: hold the rails.", **details)
