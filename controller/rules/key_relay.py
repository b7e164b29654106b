"""Key-relay (monitor) mode, where the treadmill's own console drives the belt: the checks on the
Pi's belt sensor, the commands, and the START and RESET that close and open the key relay
(SR-MON-1..5).
"""

from __future__ import annotations

from typing import Final

from controller.rules.channels import belt_sensor_text, reading_valid
from controller.rules.commands import remote_command, request_stop, select_stage
from controller.rules.faults import FAULT_ADVICE, enter, latch
from controller.rules.grip import (
    WARNING_GRIP_SUSPECT,
    grip_text,
    grip_watched,
    hands_on_rails,
    hands_text,
)
from controller.rules.model import (
    Button,
    CoreState,
    FaultCode,
    Inputs,
    KeyRelayConfig,
    LocalCommand,
    Mode,
    Press,
    RemoteCommand,
    RemoteLowerTarget,
    RemoteStop,
    RequestStop,
    SafetyConfig,
    SelectStage,
    SetTarget,
    StopKind,
)
from controller.rules.reset import clear_remote_stage_cap, refuse_reset
from controller.rules.rest import reach_rest
from controller.rules.stages import stage_config, stage_limit_kmh
from controller.rules.tick import Step, reject, replace, sentence

RELAY_SLOPE_MS: Final = 100
"""Key-relay mode: the belt sensor's fall rate is judged over at least this span (SR-MON-4)."""


def relay_start_blockers(state: CoreState, inputs: Inputs, config: SafetyConfig) -> tuple[str, ...]:
    """Everything that keeps the key relay from closing now, each with what to do (SR-MON-1).

    Empty when START may close it. :func:`decide` also requires mode IDLE, a local press and
    no stop request or reset in the same tick.
    """
    problems: list[str] = []
    if state.fault is not None:
        problems.append(
            f"fault {state.fault.code.value} is latched: {FAULT_ADVICE[state.fault.code]}"
        )
    problems.extend(_relay_rest_blockers(state, inputs, config))
    stage = stage_config(state, config)
    if hands_on_rails(inputs) < stage.grip_hands_required:
        problems.append(
            f"stage {stage.number} needs {hands_text(stage.grip_hands_required)} on the rails "
            f"({grip_text(inputs)}): hold the rails"
        )
    return tuple(problems)


def _relay_rest_blockers(state: CoreState, inputs: Inputs, config: SafetyConfig) -> list[str]:
    """Shared by START and RESET in key-relay mode: a quiet, safe machine at rest."""
    problems: list[str] = []
    if inputs.estop_pressed:
        problems.append("the e-stop is pressed: release it")
    if not inputs.safety_key_present:
        problems.append("the safety key is out: put it back and clip the cord to your clothing")
    reading = inputs.belt_sensor
    if reading is None or not reading_valid(reading):
        problems.append(
            f"the Pi's belt sensor gives {belt_sensor_text(inputs)}: check its input and wiring"
        )
    elif reading.speed_kmh > config.standstill_kmh:
        problems.append(
            f"the belt is moving ({reading.speed_kmh:.2f} km/h on the Pi's belt sensor): wait "
            "until it stands still"
        )
    if grip_watched(stage_config(state, config)) and WARNING_GRIP_SUSPECT in state.warnings:
        problems.append(
            "the grip sensors are chattering: check the rail sensors and keep the hands still"
        )
    return problems


def check_relay_emergency_inputs(step: Step) -> None:
    """E-stop pressed or safety key out at the console: EStop and latch, which opens the
    relay (SR-MON-3 with SR-ESTOP-1, SR-ESTOP-2); there is no firmware to read the key."""
    if step.inputs.estop_pressed:
        latch(step, FaultCode.ESTOP, StopKind.EMERGENCY, "E-stop pressed")
    if not step.inputs.safety_key_present:
        latch(step, FaultCode.SAFETY_KEY, StopKind.EMERGENCY, "Safety key pulled out")


def check_relay_sensor(step: Step, relay: KeyRelayConfig) -> None:
    """The Pi's belt sensor is the only speed reading in key-relay mode (SR-MON-4).

    An invalid reading latches ``belt_sensor``; a reading that falls faster than the belt can
    stop (``max_belt_decel_kmh_s``) is a sensor gone silent and latches it too. While
    RUNNING the belt must be seen moving within ``start_window_ms`` of START, and once it has
    moved, a reading at rest opens the relay (RUNNING -> STOPPING): a silent sensor reads as
    rest, so it never hides a moving belt for longer than its stale time.
    """
    speed_kmh = _sound_reading_kmh(step, relay)
    if speed_kmh is not None and step.state.mode is Mode.RUNNING:
        _check_relay_motion(step, relay, speed_kmh)


def _sound_reading_kmh(step: Step, relay: KeyRelayConfig) -> float | None:
    """The Pi's belt sensor reading, or None after latching ``belt_sensor`` for a reading that
    is invalid or falls faster than the belt can stop (SR-MON-4)."""
    state = step.state
    reading = step.inputs.belt_sensor
    if reading is None or not reading_valid(reading):
        shown = "no reading" if reading is None else f"{reading.speed_kmh!r} km/h"
        latch(
            step,
            FaultCode.BELT_SENSOR,
            StopKind.CONTROLLED,
            f"The Pi's belt sensor gave {shown}, not a valid speed reading",
        )
        step.state = replace(step.state, relay_last=None)
        return None
    speed_kmh = reading.speed_kmh
    last = state.relay_last
    # The slope is taken over at least RELAY_SLOPE_MS: one pulse period more or less moves a
    # pulse-timed reading by more than a belt can change in one tick.
    if last is None or step.now_ms - last[0] >= RELAY_SLOPE_MS:
        step.state = replace(step.state, relay_last=(step.now_ms, speed_kmh))
    if last is not None and step.now_ms - last[0] >= RELAY_SLOPE_MS:
        drop_kmh_s = (last[1] - speed_kmh) * 1000.0 / (step.now_ms - last[0])
        if drop_kmh_s > relay.max_belt_decel_kmh_s:
            latch(
                step,
                FaultCode.BELT_SENSOR,
                StopKind.CONTROLLED,
                f"The Pi's belt sensor reading fell from {last[1]:.2f} to {speed_kmh:.2f} km/h "
                f"in {step.now_ms - last[0]} ms ({drop_kmh_s:.1f} km/h/s), faster than the "
                f"belt can stop ({relay.max_belt_decel_kmh_s:g} km/h/s): the sensor has failed",
            )
            return None
    return speed_kmh


def _check_relay_motion(step: Step, relay: KeyRelayConfig, speed_kmh: float) -> None:
    """While RUNNING: no motion within ``start_window_ms`` of START, or the belt at rest after
    it has moved, opens the relay (RUNNING -> STOPPING, SR-MON-4)."""
    state = step.state
    moving = speed_kmh > step.config.standstill_kmh
    if moving and not state.relay_motion_seen:
        step.state = replace(step.state, relay_motion_seen=True)
    elif not moving and state.relay_motion_seen:
        step.state = replace(step.state, stop_reason="belt_stopped")
        enter(step, Mode.STOPPING, "belt_stopped")
        step.emit(
            "key_relay_opened",
            "the belt stopped at the treadmill's console: key relay opened; press START to "
            "allow motion again",
            reason="belt_stopped",
        )
    elif (
        not moving
        and state.relay_armed_ms is not None
        and step.now_ms - state.relay_armed_ms > relay.start_window_ms
    ):
        step.state = replace(step.state, stop_reason="no_motion")
        enter(step, Mode.STOPPING, "no_motion")
        step.emit(
            "key_relay_opened",
            f"no belt motion seen within {relay.start_window_ms} ms of START: key relay "
            "opened. Press START, then start the belt at the treadmill's console (if the "
            "belt did move, check the Pi's belt sensor)",
            reason="no_motion",
        )


def relay_commands(step: Step) -> None:
    """Commands in key-relay mode: no speed can be set from here (SR-MON-5)."""
    commands: tuple[LocalCommand | RemoteCommand, ...] = (*step.inputs.remote, *step.inputs.local)
    step.stop_requested = any(
        isinstance(command, RemoteStop | RequestStop) or command == Press(Button.STOP)
        for command in commands
    )
    for remote in step.inputs.remote:
        if isinstance(remote, RemoteLowerTarget):
            reject(
                step,
                "remote target",
                "in key-relay mode the speed is set at the treadmill's own console; use "
                "cmd/stop to stop the belt",
            )
        else:
            remote_command(step, remote)
    for local in step.inputs.local:
        if isinstance(local, RequestStop):
            request_stop(step, local.reason)
        elif isinstance(local, SelectStage):
            select_stage(step, local.stage)
        elif isinstance(local, SetTarget) or local in (Press(Button.FASTER), Press(Button.SLOWER)):
            reject(
                step,
                "speed",
                "in key-relay mode the speed is set at the treadmill's own console",
            )
        else:
            _relay_press(step, local.button)


def _relay_press(step: Step, button: Button) -> None:
    """One console button in key-relay mode (SR-MON-1, SR-MON-5)."""
    if button is Button.START:
        _relay_start(step)
    elif button is Button.STOP:
        request_stop(step, "stop_button")
    elif button is Button.STAGE_UP:
        select_stage(step, step.state.stage + 1)
    elif button is Button.STAGE_DOWN:
        select_stage(step, step.state.stage - 1)
    else:  # RESET (FASTER and SLOWER are rejected before)
        _relay_reset(step)


def _relay_start(step: Step) -> None:
    """START closes the key relay only from IDLE with every condition met (SR-MON-1)."""
    state = step.state
    if state.mode is Mode.RUNNING:
        return
    reasons: tuple[str, ...]
    if state.mode is Mode.STOPPING:
        reasons = ("the belt is stopping: wait until it stands still, then press START",)
    elif step.stop_requested:
        reasons = ("a stop was requested in the same tick: press START again",)
    elif step.reset_done:
        reasons = ("a reset never closes the key relay: press START again",)
    else:
        reasons = relay_start_blockers(state, step.inputs, step.config)
    if reasons:
        step.emit("start_refused", sentence("start refused", reasons), reasons=" | ".join(reasons))
        return
    stage = stage_config(state, step.config)
    limit = stage_limit_kmh(stage, step.config)
    step.state = replace(
        step.state,
        stop_reason=None,
        grip_changed_ms=step.now_ms,
        relay_armed_ms=step.now_ms,
        relay_motion_seen=False,
    )
    enter(step, Mode.RUNNING, "start_button")
    step.emit(
        "started",
        f"key relay closed at stage {stage.number} ({stage.name}): start the belt at the "
        f"treadmill's console. Limit {limit:.1f} km/h: above it the key relay opens",
        stage=stage.number,
        target_kmh=limit,
    )


def _relay_reset(step: Step) -> None:
    """Local RESET in key-relay mode: FAULTED -> IDLE at rest, never closing the relay."""
    state = step.state
    fault = state.fault
    if fault is None:
        clear_remote_stage_cap(step)
        return
    problems = tuple(_relay_rest_blockers(state, step.inputs, step.config))
    if problems:
        refuse_reset(step, fault, problems)
        return
    step.state = replace(
        step.state, fault=None, secondary_faults=(), fault_rest_reached=False, stop_reason=None
    )
    step.reset_done = True
    enter(step, Mode.IDLE, "reset")
    step.emit(
        "fault_cleared",
        f"fault {fault.code.value} cleared by RESET; the key relay stays open until START",
        code=fault.code.value,
    )


def relay_settle(step: Step) -> None:
    """STOPPING -> IDLE once the Pi's sensor reads rest; FAULTED remembers rest (SR-MON-3)."""
    speed_kmh = step.high_kmh
    if speed_kmh is None or speed_kmh > step.config.standstill_kmh:
        return
    reach_rest(step, speed_kmh)
