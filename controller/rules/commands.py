"""Remote and local commands of one tick: remote commands that can only make things safer,
START, stop requests, the target and the stage selection (SR-REMOTE-1..4, SR-START-1,
SR-START-3..5, SR-STOP-1, SR-SPEED-4, SR-STAGE-1..3).
"""

from __future__ import annotations

import math

from controller.rules.faults import FAULT_ADVICE, enter
from controller.rules.model import (
    Button,
    LocalCommand,
    Mode,
    Press,
    RemoteCommand,
    RemoteLowerTarget,
    RemoteStop,
    RequestStop,
    SelectStage,
    SetTarget,
)
from controller.rules.readiness import start_blockers
from controller.rules.reset import reset
from controller.rules.stages import (
    apply_stage_caps,
    change_stage,
    effective_stage_cap,
    speed_cap_kmh,
    stage_config,
    stage_limit_kmh,
)
from controller.rules.tick import Step, reject, replace, sentence


def handle_commands(step: Step) -> None:
    """Remote commands first, then local ones in order (SR-REMOTE-*, SR-START-*, ...)."""
    commands: tuple[LocalCommand | RemoteCommand, ...] = (*step.inputs.remote, *step.inputs.local)
    step.stop_requested = any(
        isinstance(command, RemoteStop | RequestStop) or command == Press(Button.STOP)
        for command in commands
    )
    for remote in step.inputs.remote:
        remote_command(step, remote)
    for local in step.inputs.local:
        _local_command(step, local)


def remote_command(step: Step, command: RemoteCommand) -> None:
    """Remote commands can only make things safer (SR-REMOTE-1..4)."""
    if isinstance(command, RemoteStop):
        request_stop(step, "remote_stop")
        return
    state = step.state
    if isinstance(command, RemoteLowerTarget):
        speed_kmh = command.speed_kmh + 0.0  # -0.0 becomes 0.0 (SR-REMOTE-2)
        if not (math.isfinite(speed_kmh) and 0.0 <= speed_kmh < state.target_kmh):
            reject(
                step,
                "remote target",
                f"{speed_kmh!r} km/h does not lower the target ({state.target_kmh:.2f} km/h); "
                "a remote command may only lower it",
            )
            return
        _set_target(step, speed_kmh, "remote")
        return
    cap = effective_stage_cap(state, step.inputs, step.config)
    if not 1 <= command.stage < cap:
        reject(
            step,
            "remote stage cap",
            f"stage {command.stage} does not lower the stage cap (now {cap}); a remote "
            "command may only lower it, to 1 at the least",
        )
        return
    step.state = replace(step.state, remote_stage_cap=command.stage)
    step.emit(
        "stage_cap_changed",
        f"remote stage cap lowered from {cap} to {command.stage}",
        from_cap=cap,
        to_cap=command.stage,
    )
    apply_stage_caps(step, "remote stage cap")


def _local_command(step: Step, command: LocalCommand) -> None:
    """Console buttons, console target and stage selection, service stop requests."""
    if isinstance(command, RequestStop):
        request_stop(step, command.reason)
    elif isinstance(command, SetTarget):
        _local_target(step, command.speed_kmh, "console target")
    elif isinstance(command, SelectStage):
        select_stage(step, command.stage)
    else:
        _press(step, command.button)


def _press(step: Step, button: Button) -> None:
    """One console button (SR-START-1, SR-STOP-1, SR-SPEED-4, SR-STAGE-1, SR-RESET-1)."""
    state = step.state
    if button is Button.START:
        _start(step)
    elif button is Button.STOP:
        request_stop(step, "stop_button")
    elif button is Button.FASTER:
        _local_target(step, state.target_kmh + step.config.speed_step_kmh, "faster")
    elif button is Button.SLOWER:
        _local_target(step, max(state.target_kmh - step.config.speed_step_kmh, 0.0), "slower")
    elif button is Button.STAGE_UP:
        select_stage(step, state.stage + 1)
    elif button is Button.STAGE_DOWN:
        select_stage(step, state.stage - 1)
    else:
        reset(step)


def _start(step: Step) -> None:
    """Start only from IDLE, on a local press, with every condition met (SR-START-1..5)."""
    state = step.state
    if state.mode is Mode.RUNNING:
        return
    reasons: tuple[str, ...]
    if state.mode is Mode.STOPPING:
        reasons = ("the belt is stopping: wait until it stands still, then press START",)
    elif state.fault is not None:
        reasons = (f"fault {state.fault.code.value} is latched: {FAULT_ADVICE[state.fault.code]}",)
    elif step.stop_requested:
        reasons = ("a stop was requested in the same tick: press START again",)
    elif step.reset_done:
        reasons = ("a reset never starts the belt: press START again",)
    else:
        reasons = start_blockers(state, step.inputs, step.config, step.now_ms)
    if reasons:
        step.emit("start_refused", sentence("start refused", reasons), reasons=" | ".join(reasons))
        return
    stage = stage_config(state, step.config)
    target_kmh = min(max(state.target_kmh, stage.start_kmh), speed_cap_kmh(state, step.config))
    step.state = replace(
        step.state,
        target_kmh=target_kmh,
        stop_reason=None,
        grip_changed_ms=step.now_ms,
    )
    enter(step, Mode.RUNNING, "start_button")
    step.emit(
        "started",
        f"belt started at stage {stage.number} ({stage.name}): ramping to {target_kmh:.2f} km/h "
        f"at {stage.accel_kmh_s:.2f} km/h/s, limit "
        f"{stage_limit_kmh(stage, step.config):.1f} km/h",
        stage=stage.number,
        target_kmh=target_kmh,
    )


def request_stop(step: Step, reason: str) -> None:
    """STOP button, service stop and remote stop: RUNNING -> STOPPING (SR-STOP-1, SR-STOP-3)."""
    if step.state.mode is Mode.RUNNING:
        step.state = replace(step.state, stop_reason=reason)
        enter(step, Mode.STOPPING, reason)


def _set_target(step: Step, target_kmh: float, source: str) -> None:
    """Set the target and report it (``target_changed``)."""
    old = step.state.target_kmh
    step.state = replace(step.state, target_kmh=target_kmh)
    step.emit(
        "target_changed",
        f"target {old:.2f} -> {target_kmh:.2f} km/h ({source})",
        from_kmh=old,
        to_kmh=target_kmh,
        source=source,
    )


def _local_target(step: Step, speed_kmh: float, source: str) -> None:
    """Local target: clamped to [0, cap]; raising only in IDLE or RUNNING (SR-SPEED-4)."""
    state = step.state
    if not (math.isfinite(speed_kmh) and speed_kmh >= 0.0):
        reject(step, source, f"{speed_kmh!r} km/h is not a speed (0 or more)")
        return
    cap_kmh = speed_cap_kmh(state, step.config)
    target_kmh = min(round(speed_kmh, 6) + 0.0, cap_kmh)  # + 0.0: -0.0 becomes 0.0
    if target_kmh > state.target_kmh and state.mode not in (Mode.IDLE, Mode.RUNNING):
        reject(step, source, f"the speed cannot be raised while {state.mode.value}")
        return
    if target_kmh == state.target_kmh:
        if speed_kmh > cap_kmh:
            reject(step, source, f"the limit is {cap_kmh:.2f} km/h at stage {state.stage}")
        return
    _set_target(step, target_kmh, source)


def select_stage(step: Step, stage: int) -> None:
    """Lower in any mode; raise only in IDLE and up to the stage cap (SR-STAGE-1..3)."""
    state = step.state
    config = step.config
    if not 1 <= stage <= len(config.stages):
        reject(step, "stage", f"stage {stage} does not exist (1 to {len(config.stages)})")
        return
    if stage < state.stage:
        change_stage(step, stage, "stage lowered at the console")
        return
    if stage == state.stage:
        return
    cap = effective_stage_cap(state, step.inputs, config)
    if state.mode is not Mode.IDLE:
        reject(
            step, "stage", f"the stage can only be raised with the belt idle ({state.mode.value})"
        )
    elif stage > cap:
        reject(step, "stage", f"stage {stage} is above the allowed stage {cap}")
    else:
        change_stage(step, stage, "stage raised at the console")
