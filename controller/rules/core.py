"""The safety core: every rule that decides whether, and how fast, the belt moves.

:func:`decide` is a pure function: it takes the previous :class:`CoreState`, the
:class:`Inputs` gathered in this tick, the :class:`SafetyConfig` and the time
``now_ms`` (integer milliseconds from a monotonic clock), and returns a
:class:`Decision`: the next state, exactly one motion command and the events to
report. It does no I/O, keeps no global state and reads no clock, so every rule
can be tested by driving it with explicit times.

Rule ids (``SR-...``) refer to ``docs/safety.md``, which also gives the tests that
prove each rule. Within one tick the checks run in this order (SR-PREC-1):

1. stage caps (a lowered training or remote cap lowers the stage at once),
2. emergency conditions: e-stop, safety key, overspeed, belt moving at rest,
3. firmware link and firmware state: stale status, firmware fault, reboot,
   configuration mismatch, invalid speed reading; then the not-following check,
4. grip,
5. commands: remote first, then local, in the order received,
6. settling (STOPPING -> IDLE at rest), the speed ramp and the motion command.

A fault latched by an earlier step is never undone by a later one.

Example:
    >>> from controller.rules.model import GripLossAction, Inputs, SafetyConfig, StageConfig
    >>> stage = StageConfig(1, "walk", 2.0, 0.5, 0.2, 0.4, 1, GripLossAction.STOP_LATCH, 300)
    >>> config = SafetyConfig(stages=(stage,), machine_max_kmh=16.0)
    >>> state = initial_state(config)
    >>> decision = decide(state, Inputs(False, False, False, True, None), config, now_ms=0)
    >>> decision.state.mode, decision.state.fault.code, decision.motion
    (<Mode.FAULTED: 'faulted'>, <FaultCode.LINK_STALE: 'link_stale'>, Stop(decel_kmh_s=3.6))
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from controller.rules import transitions
from controller.rules.model import (
    BeltSensorReading,
    Button,
    ChannelConfig,
    CoreState,
    Decision,
    EStop,
    Event,
    Fault,
    FaultCode,
    FirmwareState,
    FirmwareStatus,
    GripLossAction,
    Inputs,
    KeyRelayConfig,
    LinkHealth,
    LocalCommand,
    Mode,
    MotionCommand,
    Press,
    RemoteCommand,
    RemoteLowerTarget,
    RemoteStop,
    RequestStop,
    SafetyConfig,
    SelectStage,
    SetSpeed,
    SetTarget,
    StageConfig,
    Stop,
    StopKind,
)

RELAY_SLOPE_MS: Final = 100
"""Key-relay mode: the belt sensor's fall rate is judged over at least this span (SR-MON-4)."""


def replace(state: CoreState, /, **changes: object) -> CoreState:
    """``dataclasses.replace``, but ``state`` itself when no field would change.

    Most checks of a tick rewrite a field or two with the value it already has; this keeps
    a steady tick from building a new state object for each of them.
    """
    for name, value in changes.items():
        current = getattr(state, name)
        if current is not value and current != value:
            return dataclasses.replace(state, **changes)  # type: ignore[arg-type]  # fields of CoreState by name
    return state


MAX_TICK_DT_MS: Final = 100
"""Longest time step one tick may ramp over (SR-SPEED-3): a pause never produces a jump."""

FW_FAULT_SAFETY_KEY_OPEN: Final = 5
"""Firmware fault code: its safety-key circuit opened (``FwFault.SAFETY_KEY_OPEN``, FW-10)."""
FW_FAULT_ESTOP: Final = 6
"""Firmware fault code: it received ESTOP (``FwFault.ESTOP``, FW-5): this controller sent it."""
POWER_CHAIN_FAULTS: Final = frozenset({FaultCode.ESTOP, FaultCode.SAFETY_KEY})
"""Console faults that open the motor power chain (e-stop and key are wired in series with
it): the firmware then reads its safety-key circuit open and latches its own fault."""
RESET_CLEAR_TIMEOUT_MS: Final = 1000
"""A RESET that sent CLEAR_FAULT waits this long for the firmware to clear (SR-RESET-3)."""

WARNING_GRIP_SUSPECT: Final = "grip_sensor_suspect"
"""Warning flag: the grip sensors chatter (SR-GRIP-6)."""

WARNING_GRIP_STUCK: Final = "grip_sensor_stuck"
"""Warning flag: the grip reading has not changed for a long time while running (SR-GRIP-7)."""

WIRE_SPEED_RESOLUTION_KMH: Final = 0.01
"""Resolution of SET_SPEED's speed on the wire (docs/protocol.md; a drift test ties the two).
Rising or falling is decided on the wire value, as the firmware sees it (SR-MOTION-2)."""

FAULT_ADVICE: Final[Mapping[FaultCode, str]] = {
    FaultCode.GRIP_LOST: "Hold the rails, then press RESET",
    FaultCode.GRIP_SENSOR: (
        "Check the rail grip sensors and their wiring (wet or gloved hands can chatter), "
        "then press RESET"
    ),
    FaultCode.ESTOP: "Release the e-stop, then press RESET with the belt at rest",
    FaultCode.SAFETY_KEY: (
        "Put the safety key back, clip its cord to your clothing, then press RESET"
    ),
    FaultCode.LINK_STALE: (
        "Check the USB cable to the motor controller; press RESET once the link is back"
    ),
    FaultCode.OVERSPEED: (
        "Step off the belt. Have the speed sensor and motor controller checked, "
        "then press RESET with the belt at rest"
    ),
    FaultCode.NOT_FOLLOWING: (
        "Check the belt for a stall or obstruction, the speed sensor and the motor "
        "controller, then press RESET"
    ),
    FaultCode.MOVING_AT_REST: (
        "Step off the belt and have the motor controller checked, then press RESET"
    ),
    FaultCode.FIRMWARE_FAULT: (
        "Read the firmware fault code in the log and fix its cause, then press RESET (it also "
        "clears the motor controller's fault)"
    ),
    FaultCode.FIRMWARE_REBOOT: (
        "The motor controller restarted unexpectedly (power or watchdog): check its supply, "
        "then press RESET"
    ),
    FaultCode.CONFIG_MISMATCH: (
        "The motor controller holds other limits than configured: restart the service so it "
        "sends them again, then press RESET"
    ),
    FaultCode.INTERNAL: "Internal controller error: read the log, then restart the service",
    FaultCode.CHANNELS_DISAGREE: (
        "Step off the belt. Check both belt speed sensors (the motor controller's and the "
        "Pi's), their magnets and wiring, and the belt for slip; then press RESET with the "
        "belt at rest"
    ),
    FaultCode.BELT_SENSOR: (
        "Check the Pi's belt sensor input (belt_sensor in the config) and its wiring, then "
        "press RESET"
    ),
}
"""What the user must do to clear each fault (shown in every fault event; no final full stop)."""


# --------------------------------------------------------------------------
# Small pure helpers, public so the service and the tests can use them
# --------------------------------------------------------------------------


def stage_config(state: CoreState, config: SafetyConfig) -> StageConfig:
    """The configuration of the state's current stage."""
    return config.stages[state.stage - 1]


def stage_limit_kmh(stage: StageConfig, config: SafetyConfig) -> float:
    """Highest speed allowed at ``stage``: min(stage max, machine max) (SR-SPEED-1)."""
    return min(stage.max_kmh, config.machine_max_kmh)


def wire_speed_kmh(speed_kmh: float) -> float:
    """``speed_kmh`` as SET_SPEED carries it on the wire (rounded to 0.01 km/h)."""
    return round(speed_kmh / WIRE_SPEED_RESOLUTION_KMH) * WIRE_SPEED_RESOLUTION_KMH


def measured_accel_kmh_s(
    samples: tuple[tuple[int, float], ...], measured_kmh: float, now_ms: int, window_ms: int
) -> tuple[tuple[tuple[int, float], ...], float]:
    """Acceleration of a measured speed over the last half to whole ``window_ms``, and the
    samples to keep for the next tick (SR-PLAUS-5).

    Keeps two ``(ms, km/h)`` samples half a window apart and returns the slope from the
    older one (between half a window and a whole window old) to now; 0 until half a window
    has been seen. Pure and small on purpose: any speed channel can be fed through it.
    """
    half_ms = max(window_ms // 2, 1)
    if samples and now_ms < samples[-1][0]:
        samples = ()  # time went backwards: start again
    if not samples or now_ms - samples[-1][0] >= half_ms:
        samples = (*samples[-1:], (now_ms, measured_kmh))
    oldest_ms, oldest_kmh = samples[0]
    elapsed_ms = now_ms - oldest_ms
    if elapsed_ms < half_ms:
        return samples, 0.0
    return samples, (measured_kmh - oldest_kmh) * 1000.0 / elapsed_ms


def _runaway_confirm_ms(config: SafetyConfig) -> int:
    return config.runaway_window_ms // 2


def runaway_seen(
    measured_kmh: float, accel_kmh_s: float, allowed_kmh: float, config: SafetyConfig
) -> bool:
    """A runaway: above the allowed speed (limit + margin) and still accelerating faster than
    ``runaway_accel_kmh_s``, which no command asks for (SR-PLAUS-5)."""
    return measured_kmh > allowed_kmh and accel_kmh_s > config.runaway_accel_kmh_s


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
    if stage.grip_hands_required == 0 and stage.on_grip_loss is GripLossAction.WARN:
        return 1
    return stage.grip_hands_required


def grip_watched(stage: StageConfig) -> bool:
    """True when losing grip has a consequence at ``stage`` (SR-GRIP-1, SR-GRIP-4)."""
    return _hands_watched(stage) > 0 and stage.on_grip_loss is not GripLossAction.NONE


def belt_at_rest(firmware: FirmwareStatus, config: SafetyConfig) -> bool:
    """The belt stands still: both the measured speed and the firmware's own ramped set-point
    are at or below ``standstill_kmh`` (SR-STOP-2). A coarse speed sensor can read 0 while a
    slow belt still creeps; the firmware's set-point cannot."""
    return (
        firmware.measured_kmh <= config.standstill_kmh
        and firmware.commanded_kmh <= config.standstill_kmh
    )


def firmware_fresh(firmware: FirmwareStatus | None, config: SafetyConfig, now_ms: int) -> bool:
    """A firmware status exists and is at most ``stale_ms`` old (SR-STALE-1).

    The one definition of a fresh status: the core, the service (watchdog, shutdown) and
    telemetry (``firmware.link``) all use it, through :attr:`Decision.firmware_fresh`.
    """
    return firmware is not None and now_ms - firmware.received_ms <= config.stale_ms


def at_rest(state: CoreState, fresh: FirmwareStatus | None, config: SafetyConfig) -> bool:
    """The belt is at rest for everything that needs it (reload, client change, trainer
    action, shutdown): the mode is IDLE or FAULTED, the firmware status is usable
    (``fresh``, see :func:`status_problem`) and :func:`belt_at_rest` holds, so a slowly
    creeping belt with a speed sensor that already reads 0 does not count (SR-STOP-2)."""
    return (
        state.mode in (Mode.IDLE, Mode.FAULTED)
        and fresh is not None
        and belt_at_rest(fresh, config)
    )


def second_channel_at_rest(inputs: Inputs, config: SafetyConfig) -> bool:
    """With a second speed channel, it too reads the belt at or below ``standstill_kmh``
    (SR-CHAN-4); always True without one. A missing or invalid reading is not rest."""
    if config.second_channel is None:
        return True
    reading = inputs.belt_sensor
    return (
        reading is not None
        and _reading_valid(reading)
        and reading.speed_kmh <= config.standstill_kmh
    )


def _reading_valid(reading: BeltSensorReading) -> bool:
    return math.isfinite(reading.speed_kmh) and reading.speed_kmh >= 0.0


def _belt_sensor_text(inputs: Inputs) -> str:
    reading = inputs.belt_sensor
    if reading is None:
        return "no reading"
    return f"{reading.speed_kmh:.2f} km/h"


def channel_speeds_kmh(
    fresh: FirmwareStatus | None, inputs: Inputs, config: SafetyConfig
) -> tuple[float | None, float | None]:
    """The higher and the lower of the usable belt speed readings (SR-CHAN-3).

    The firmware's reading counts when its status is fresh and valid; the Pi's belt sensor
    when a second channel is configured and its reading is valid. ``(None, None)`` when no
    reading is usable; both equal with one usable channel.
    """
    speeds: list[float] = []
    if fresh is not None:
        speeds.append(fresh.measured_kmh)
    reading = inputs.belt_sensor
    if config.second_channel is not None and reading is not None and _reading_valid(reading):
        speeds.append(reading.speed_kmh)
    if not speeds:
        return None, None
    return max(speeds), min(speeds)


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


def status_problem(
    firmware: FirmwareStatus | None, config: SafetyConfig, now_ms: int
) -> str | None:
    """Why ``firmware`` cannot be trusted for a speed reading now, or None when it can.

    A status is usable when it exists, is at most ``stale_ms`` old and carries a finite,
    non-negative measured speed (SR-STALE-1, SR-PLAUS-4).
    """
    if firmware is None:
        return "no firmware status has been received"
    if not firmware_fresh(firmware, config, now_ms):
        age_ms = now_ms - firmware.received_ms
        return f"the last firmware status is {age_ms} ms old (limit {config.stale_ms} ms)"
    if not (math.isfinite(firmware.measured_kmh) and firmware.measured_kmh >= 0.0):
        return f"the measured belt speed {firmware.measured_kmh!r} km/h is not a valid reading"
    return None


def start_blockers(
    state: CoreState, inputs: Inputs, config: SafetyConfig, now_ms: int
) -> tuple[str, ...]:
    """Everything that stops a START from being accepted now, each with what to do (SR-START-2).

    Empty when the belt may start. :func:`decide` also requires mode IDLE, a local press
    and no stop request in the same tick.
    """
    problems: list[str] = []
    if state.fault is not None:
        problems.append(
            f"fault {state.fault.code.value} is latched: {FAULT_ADVICE[state.fault.code]}"
        )
    problems.extend(_rest_blockers(inputs, config, now_ms))
    problems.extend(_link_blockers(state, inputs, config, now_ms))
    firmware = inputs.firmware
    if firmware is not None:
        if firmware.state is not FirmwareState.IDLE:
            problems.append(
                f"the motor controller is in state {firmware.state.value}, not idle: "
                "wait until it is ready"
            )
        if firmware.fault_code != 0:
            problems.append(
                f"the motor controller reports fault code {firmware.fault_code}: press RESET"
            )
    stage = stage_config(state, config)
    hands = hands_on_rails(inputs)
    if hands < stage.grip_hands_required:
        problems.append(
            f"stage {stage.number} needs {_hands_text(stage.grip_hands_required)} on the rails "
            f"({_grip_text(inputs)}): hold the rails"
        )
    if grip_watched(stage) and WARNING_GRIP_SUSPECT in state.warnings:
        problems.append(
            "the grip sensors are chattering: check the rail sensors and keep the hands still"
        )
    return tuple(problems)


def reset_blockers(
    state: CoreState, inputs: Inputs, config: SafetyConfig, now_ms: int
) -> tuple[str, ...]:
    """Everything that stops a RESET from being accepted now, each with what to do (SR-RESET-2).

    A firmware fault is not listed: a reset sends CLEAR_FAULT for it (SR-RESET-3).
    """
    problems = list(_rest_blockers(inputs, config, now_ms))
    if state.fault is not None and FaultCode.INTERNAL in (
        state.fault.code,
        *state.secondary_faults,
    ):
        problems.append(
            "an internal controller error is latched: read the log, then restart the service"
        )
    if grip_watched(stage_config(state, config)) and WARNING_GRIP_SUSPECT in state.warnings:
        problems.append(
            "the grip sensors are chattering: check the rail sensors and keep the hands still"
        )
    return tuple(problems)


def _rest_blockers(inputs: Inputs, config: SafetyConfig, now_ms: int) -> list[str]:
    """Conditions shared by start and reset: a quiet, safe, at-rest machine."""
    problems: list[str] = []
    if inputs.estop_pressed:
        problems.append("the e-stop is pressed: release it")
    if not inputs.safety_key_present:
        problems.append("the safety key is out: put it back and clip the cord to your clothing")
    firmware = inputs.firmware
    problem = status_problem(firmware, config, now_ms)
    if problem is not None or firmware is None:
        problems.append(f"{problem}: check the USB link to the motor controller")
        return problems
    if not firmware.safety_key_closed:
        problems.append("the motor controller reads the safety key circuit open: put the key back")
    if not belt_at_rest(firmware, config):
        problems.append(
            f"the belt is moving ({firmware.measured_kmh:.2f} km/h measured, "
            f"{firmware.commanded_kmh:.2f} km/h set in the motor controller): "
            "wait until it stands still"
        )
    elif not second_channel_at_rest(inputs, config):
        problems.append(
            f"the Pi's belt sensor still sees the belt moving ({_belt_sensor_text(inputs)}): "
            "wait until it stands still"
        )
    if firmware.config_checksum != firmware.expected_config_checksum:
        problems.append(
            f"the motor controller's configuration checksum 0x{firmware.config_checksum:08x} "
            f"differs from 0x{firmware.expected_config_checksum:08x}: restart the service"
        )
    return problems


def link_settled(state: CoreState, inputs: Inputs, config: SafetyConfig, now_ms: int) -> bool:
    """The link has been up, in the same session and fresh for ``link_settle_ms`` (SR-LINK-2)."""
    return not _link_blockers(state, inputs, config, now_ms)


def _link_blockers(
    state: CoreState, inputs: Inputs, config: SafetyConfig, now_ms: int
) -> list[str]:
    """The link must be up and settled before a START (SR-LINK-2)."""
    link = inputs.link
    if link is None:
        return []
    if not link.up:
        return ["the firmware link is down: check the USB cable to the motor controller"]
    since_ms = state.link_settled_since_ms
    if since_ms is None or state.link_session != link.session:
        return ["the firmware link has just been set up again: wait a moment"]
    settled_ms = now_ms - since_ms
    if settled_ms < config.link_settle_ms:
        return [
            f"the firmware link has been up for {settled_ms} ms, less than "
            f"{config.link_settle_ms} ms: wait a moment"
        ]
    return []


def _hands_text(count: int) -> str:
    return "one hand" if count == 1 else f"{count} hands"


def _grip_text(inputs: Inputs) -> str:
    left = "held" if inputs.grip_left else "released"
    right = "held" if inputs.grip_right else "released"
    return f"left {left}, right {right}"


# --------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------


def initial_state(config: SafetyConfig) -> CoreState:
    """IDLE at stage 1, target at stage 1's start speed, nothing commanded (SR-MODE-2).

    Raises:
        ValueError: the configuration has no stages (check_safety_config refuses it too).
    """
    if not config.stages:
        raise ValueError("the safety configuration has no stages: configure at least stage 1")
    first = config.stages[0]
    return CoreState(
        mode=Mode.IDLE,
        stage=1,
        target_kmh=min(first.start_kmh, stage_limit_kmh(first, config)),
        commanded_kmh=0.0,
    )


def decide(state: CoreState, inputs: Inputs, config: SafetyConfig, now_ms: int) -> Decision:
    """One control tick: the next state, exactly one motion command, and the events.

    ``now_ms`` comes from a monotonic clock. The firmware lease is renewed only by the
    SetSpeed returned while RUNNING; every other mode returns Stop or EStop (SR-MOTION-1),
    so the belt stops on its own if decisions stop coming.
    """
    if config.key_relay is not None:
        return _decide_key_relay(state, inputs, config, config.key_relay, now_ms)
    dt_ms = _tick_dt_ms(state.last_tick_ms, now_ms)
    step = _Step(
        state=replace(state, last_tick_ms=now_ms),
        inputs=inputs,
        config=config,
        now_ms=now_ms,
        fresh=inputs.firmware if status_problem(inputs.firmware, config, now_ms) is None else None,
    )
    step.high_kmh, step.low_kmh = channel_speeds_kmh(step.fresh, inputs, config)
    if step.state.stage > len(config.stages):
        _change_stage(step, len(config.stages), "stage not in the reloaded configuration")
    _apply_stage_caps(step, "stage cap lowered")
    _track_grip_sensor(step)
    _check_emergencies(step)
    _check_link(step)
    _check_link_and_firmware(step)
    _check_channels(step)
    _check_following(step)
    _check_grip(step)
    _continue_reset(step)
    _handle_commands(step)
    _stop_on_zero_target(step)
    _settle(step)
    previous_kmh = step.state.commanded_kmh
    _ramp(step, dt_ms)
    return Decision(
        state=step.state,
        motion=_motion(step.state, config, previous_kmh),
        clear_firmware_fault=step.clear_firmware_fault,
        events=tuple(step.events),
        belt_at_rest=at_rest(step.state, step.fresh, config)
        and second_channel_at_rest(inputs, config),
        firmware_fresh=firmware_fresh(inputs.firmware, config, now_ms),
        next_deadline_ms=next_deadline_ms(step.state, inputs, config),
    )


def next_deadline_ms(state: CoreState, inputs: Inputs, config: SafetyConfig) -> int | None:
    """When the next running timer runs out: the earliest time after ``state.last_tick_ms``
    at which :func:`decide`, given the same inputs (no new commands, the same firmware
    status), would decide differently; None when no timer runs.

    The caller wakes then, in addition to its regular ticks, so a timer acts when it runs out
    instead of at the next tick: the grip grace (SR-GRIP-2), the stale status (SR-STALE-1),
    overspeed, not following and moving at rest (SR-PLAUS-1..3), the runaway confirmation
    (SR-PLAUS-5), the speed channels disagreeing (SR-CHAN-2), the grip chatter window, the
    stuck-grip warning and a touch becoming a hold (SR-GRIP-6, 7, 10), the link-quality window
    (SR-LINK-3), a reset waiting for CLEAR_FAULT (SR-RESET-3) and the first tick at rest after
    an emergency (SR-STOP-3). It may be early (then the decision is the same), never late.
    Computed from the state the tick produced, the inputs and the config only.
    """
    now_ms = state.last_tick_ms
    stage = stage_config(state, config)
    firmware = inputs.firmware
    candidates: list[int] = []
    if firmware is not None:
        candidates.append(firmware.received_ms + config.stale_ms + 1)
    if state.mode is Mode.RUNNING:
        # These two have not acted yet (they would have latched, slowed, warned or flagged),
        # even if their time has passed: a stage change by a command later in the tick can
        # make one due at once (SR-GRIP-8), so it acts at the next possible millisecond.
        soonest_ms = 0 if now_ms is None else now_ms + 1
        lost_ms = state.grip_lost_since_ms
        held_ms = state.grip_held_since_ms
        if lost_ms is not None and held_ms is not None:
            # A touch during a loss: nothing acts until it has become a hold (SR-GRIP-10).
            candidates.append(max(held_ms + config.grip_regrip_ms, soonest_ms))
        elif lost_ms is not None and not state.grip_action_taken:
            candidates.append(max(lost_ms + stage.grip_grace_ms, soonest_ms))
        if (
            WARNING_GRIP_SUSPECT in state.warnings
            and grip_watched(stage)
            and stage.on_grip_loss is GripLossAction.STOP_LATCH
        ):
            # A chattering sensor at a stage that latches on grip loss latches at the next
            # grip check (SR-GRIP-6); a stage lowered by a command later in the tick makes
            # that the next millisecond.
            candidates.append(soonest_ms)
        if (
            grip_watched(stage)
            and state.grip_changed_ms is not None
            and WARNING_GRIP_STUCK not in state.warnings
        ):
            candidates.append(max(state.grip_changed_ms + config.grip_stuck_window_ms, soonest_ms))
    edges = state.grip_edges_ms
    if len(edges) >= config.grip_chatter_edges:
        candidates.append(edges[-config.grip_chatter_edges] + config.grip_chatter_window_ms)
    if state.overspeed_since_ms is not None:
        candidates.append(state.overspeed_since_ms + config.overspeed_ms + 1)
    if state.follow_since_ms is not None:
        candidates.append(state.follow_since_ms + config.follow_ms + 1)
    if state.moving_at_rest_since_ms is not None:
        candidates.append(state.moving_at_rest_since_ms + config.moving_at_rest_ms + 1)
    if state.runaway_suspect is not None:
        candidates.append(state.runaway_suspect[0] + _runaway_confirm_ms(config) + 1)
    if state.disagree_since_ms is not None and config.second_channel is not None:
        candidates.append(state.disagree_since_ms + config.second_channel.disagree_ms + 1)
    if state.link_window is not None and inputs.link is not None:
        candidates.append(state.link_window[0] + config.link_window_ms)
    if state.reset_armed_ms is not None:
        candidates.append(state.reset_armed_ms + RESET_CLEAR_TIMEOUT_MS + 1)
    fault = state.fault
    if (
        fault is not None
        and not state.fault_rest_reached
        and now_ms is not None
        and firmware is not None
        and status_problem(firmware, config, now_ms) is None
        and belt_at_rest(firmware, config)
        and not _emergency_input(inputs)
    ):
        candidates.append(fault.since_ms + 1)
    later = [t for t in candidates if now_ms is None or t > now_ms]
    return min(later) if later else None


def internal_fault(state: CoreState, config: SafetyConfig, now_ms: int, message: str) -> Decision:
    """Latch FaultCode.INTERNAL with a controlled stop (SR-FAULT-4).

    For the service's single catch-all: an exception anywhere in a tick ends here.
    """
    record = _Record(state=state, now_ms=now_ms)
    _latch(record, FaultCode.INTERNAL, StopKind.CONTROLLED, message)
    return Decision(
        state=record.state,
        motion=_stop_command(record.state, config),
        events=tuple(record.events),
    )


# --------------------------------------------------------------------------
# The tick, step by step
# --------------------------------------------------------------------------


@dataclass(kw_only=True)
class _Record:
    """The state being built and the events so far; lives and dies inside one call."""

    state: CoreState
    now_ms: int
    events: list[Event] = field(default_factory=list)

    def emit(self, kind: str, message: str, **details: str | int | float | bool | None) -> None:
        self.events.append(Event(kind=kind, message=message, details=details))


@dataclass(kw_only=True)
class _Step(_Record):
    """Working record of one call to :func:`decide`."""

    inputs: Inputs
    config: SafetyConfig
    fresh: FirmwareStatus | None  # the firmware status when usable for a speed reading
    high_kmh: float | None = None  # the higher usable belt speed reading (SR-CHAN-3)
    low_kmh: float | None = None  # the lower one (equal to high_kmh with one channel)
    clear_firmware_fault: bool = False
    stop_requested: bool = False
    reset_done: bool = False


def _tick_dt_ms(last_tick_ms: int | None, now_ms: int) -> int:
    """Milliseconds to ramp over in this tick: clamped to [0, MAX_TICK_DT_MS] (SR-SPEED-3)."""
    if last_tick_ms is None:
        return 0
    return min(max(now_ms - last_tick_ms, 0), MAX_TICK_DT_MS)


def _enter(step: _Record, mode: Mode, reason: str) -> None:
    """Change mode and report it as ``old -> new (reason)`` (SR-MODE-1).

    A change missing from the transition table is an internal error: the mode stays and
    ``internal`` latches with a controlled stop instead (SR-MODE-3). Entering FAULTED is
    never refused, so the fail-safe path always ends.
    """
    old = step.state.mode
    if mode is not Mode.FAULTED and not transitions.is_allowed(old, mode):
        _latch(
            step,
            FaultCode.INTERNAL,
            StopKind.CONTROLLED,
            f"Internal error: mode change {old.value} -> {mode.value} ({reason}) is not in "
            "the mode-transition table",
        )
        return
    step.state = replace(step.state, mode=mode)
    step.emit(
        "transition",
        f"{old.value} -> {mode.value} ({reason})",
        **{"from": old.value, "to": mode.value, "reason": reason},
    )


def _latch(
    step: _Record,
    code: FaultCode,
    stop: StopKind,
    seen: str,
    *,
    follows: frozenset[FaultCode] = frozenset(),
) -> None:
    """Latch a fault, or upgrade/record it when already FAULTED (SR-FAULT-1..3).

    ``follows``: latched first causes this observation is a consequence of; it is then
    folded into that cause (SR-FAULT-6) instead of reported as a fault of its own. A new
    fault of its own cancels a RESET waiting for the firmware (SR-RESET-3).
    """
    state = step.state
    current = state.fault
    message = f"{seen}. {FAULT_ADVICE[code]}."
    fault = Fault(code=code, message=message, since_ms=step.now_ms, stop=stop)
    if current is None:
        step.state = replace(
            step.state,
            fault=fault,
            stop_reason=code.value,
        )
        _enter(step, Mode.FAULTED, code.value)
        step.emit(
            "fault",
            message,
            code=code.value,
            stop=stop.value,
            since_ms=step.now_ms,
            upgraded_from=None,
        )
        return
    if code is current.code or code in state.secondary_faults:
        return
    # Every cause in a ``follows`` set stops with an emergency stop, so folding never hides
    # a stop upgrade (SR-FAULT-2).
    if current.code in follows:
        step.state = replace(step.state, secondary_faults=(*state.secondary_faults, code))
        step.emit(
            "fault_folded",
            f"{seen}: a consequence of fault {current.code.value}, cleared with it",
            code=code.value,
            cause=current.code.value,
        )
        return
    step.state = replace(step.state, reset_armed_ms=None)
    if stop is StopKind.EMERGENCY and current.stop is StopKind.CONTROLLED:
        step.state = replace(
            step.state, fault=fault, secondary_faults=(*state.secondary_faults, current.code)
        )
        step.emit(
            "fault",
            f"{message} (stop upgraded to an emergency stop; first fault: {current.code.value})",
            code=code.value,
            stop=stop.value,
            since_ms=step.now_ms,
            upgraded_from=current.code.value,
        )
        return
    step.state = replace(step.state, secondary_faults=(*state.secondary_faults, code))
    step.emit(
        "fault",
        f"{message} (also seen while fault {current.code.value} is latched)",
        code=code.value,
        stop=stop.value,
        since_ms=step.now_ms,
        upgraded_from=None,
    )


def _change_stage(step: _Step, new_stage: int, reason: str) -> None:
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


def _apply_stage_caps(step: _Step, reason: str) -> None:
    """A training or remote cap below the current stage lowers it at once (SR-STAGE-4)."""
    cap = effective_stage_cap(step.state, step.inputs, step.config)
    if step.state.stage > cap:
        _change_stage(step, cap, reason)


def _track_grip_sensor(step: _Step) -> None:
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
            f"({_grip_text(step.inputs)}): if the hands moved, check the rail sensors.",
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


def _check_emergencies(step: _Step) -> None:
    """E-stop, safety key, overspeed, moving at rest: EStop and latch (SR-ESTOP-*, SR-PLAUS-*)."""
    inputs = step.inputs
    if inputs.estop_pressed:
        _latch(step, FaultCode.ESTOP, StopKind.EMERGENCY, "E-stop pressed")
    if not inputs.safety_key_present:
        _latch(
            step,
            FaultCode.SAFETY_KEY,
            StopKind.EMERGENCY,
            "Safety key pulled out (console input)",
        )
    firmware = inputs.firmware
    if firmware is not None and not firmware.safety_key_closed:
        _latch(
            step,
            FaultCode.SAFETY_KEY,
            StopKind.EMERGENCY,
            "The motor controller reads the safety key circuit open",
            follows=POWER_CHAIN_FAULTS,
        )
    if _emergency_input(inputs):
        # ESTOP goes out on every tick while the e-stop is pressed or the key is out (SR-STOP-3).
        step.state = replace(step.state, fault_rest_reached=False)
    _check_overspeed(step)
    _check_moving_at_rest(step)


def _firmware_fault_follows(state: CoreState, fault_code: int) -> frozenset[FaultCode]:
    """The first causes a firmware fault code follows from (SR-FAULT-6): its safety circuit
    opened by the e-stop or the key, or its ESTOP latch from this controller's own EStop."""
    if fault_code == FW_FAULT_SAFETY_KEY_OPEN:
        return POWER_CHAIN_FAULTS
    fault = state.fault
    if fault_code == FW_FAULT_ESTOP and fault is not None and fault.stop is StopKind.EMERGENCY:
        return frozenset({fault.code})
    return frozenset()


def _emergency_input(inputs: Inputs) -> bool:
    """The e-stop is pressed or the safety key is out (console or firmware reading)."""
    firmware = inputs.firmware
    return (
        inputs.estop_pressed
        or not inputs.safety_key_present
        or (firmware is not None and not firmware.safety_key_closed)
    )


def _check_overspeed(step: _Step) -> None:
    """Measured above max(limit, commanded) + margin for > overspeed_ms: EStop (SR-PLAUS-1)."""
    measured_kmh = step.high_kmh
    state = step.state
    config = step.config
    if measured_kmh is None:
        step.state = replace(
            step.state, overspeed_since_ms=None, speed_samples=(), runaway_suspect=None
        )
        return
    reference_kmh = max(stage_limit_kmh(stage_config(state, config), config), state.commanded_kmh)
    margin_kmh = max(config.overspeed_abs_kmh, config.overspeed_rel * reference_kmh)
    # The higher of the speed channels goes through the runaway rule (SR-PLAUS-5).
    samples, accel_kmh_s = measured_accel_kmh_s(
        state.speed_samples, measured_kmh, step.now_ms, config.runaway_window_ms
    )
    # Once seen, a runaway stays suspected while the belt stays above the allowed speed (a
    # foot strike may flatten the acceleration for a moment). It is confirmed after half a
    # window if the reading has kept rising since: one glitching sensor pulse, which disturbs
    # one 100 ms reading, never trips it, nor does a reading that jumps once and then holds
    # (left to the overspeed window).
    suspect = state.runaway_suspect
    if measured_kmh <= reference_kmh + margin_kmh:
        suspect = None
    elif suspect is None and runaway_seen(
        measured_kmh, accel_kmh_s, reference_kmh + margin_kmh, config
    ):
        suspect = (step.now_ms, measured_kmh)
    step.state = replace(step.state, speed_samples=samples, runaway_suspect=suspect)
    confirm_ms = _runaway_confirm_ms(config)
    if (
        suspect is not None
        and step.now_ms - suspect[0] > confirm_ms
        and measured_kmh - suspect[1] >= config.runaway_accel_kmh_s * confirm_ms / 2000.0
    ):
        _latch(
            step,
            FaultCode.OVERSPEED,
            StopKind.EMERGENCY,
            f"Belt measured at {measured_kmh:.2f} km/h{_source(step, measured_kmh)}, up "
            f"{measured_kmh - suspect[1]:.2f} km/h in {step.now_ms - suspect[0]} ms and "
            f"accelerating at {accel_kmh_s:.1f} km/h/s, above the allowed {reference_kmh:.2f} "
            f"km/h + {margin_kmh:.2f} km/h margin (no command accelerates faster than "
            f"{config.runaway_accel_kmh_s:.1f} km/h/s): runaway",
        )
    if measured_kmh <= reference_kmh + margin_kmh:
        step.state = replace(step.state, overspeed_since_ms=None)
        return
    since_ms = state.overspeed_since_ms if state.overspeed_since_ms is not None else step.now_ms
    step.state = replace(step.state, overspeed_since_ms=since_ms)
    lasted_ms = step.now_ms - since_ms
    if lasted_ms > config.overspeed_ms:
        _latch(
            step,
            FaultCode.OVERSPEED,
            StopKind.EMERGENCY,
            f"Belt measured at {measured_kmh:.2f} km/h{_source(step, measured_kmh)} for "
            f"{lasted_ms} ms, above the allowed {reference_kmh:.2f} km/h + {margin_kmh:.2f} "
            "km/h margin",
        )


def _check_moving_at_rest(step: _Step) -> None:
    """Belt moving while it should stand still for > moving_at_rest_ms: EStop (SR-PLAUS-3)."""
    measured_kmh = step.high_kmh
    state = step.state
    config = step.config
    should_rest = state.mode is Mode.IDLE or (
        state.mode is Mode.FAULTED and state.fault_rest_reached
    )
    if measured_kmh is None or not should_rest or measured_kmh <= config.standstill_kmh:
        step.state = replace(step.state, moving_at_rest_since_ms=None)
        return
    since_ms = (
        state.moving_at_rest_since_ms if state.moving_at_rest_since_ms is not None else step.now_ms
    )
    step.state = replace(step.state, moving_at_rest_since_ms=since_ms)
    lasted_ms = step.now_ms - since_ms
    if lasted_ms > config.moving_at_rest_ms:
        # Not at rest after all: a latched emergency goes back to sending EStop.
        step.state = replace(step.state, fault_rest_reached=False)
        _latch(
            step,
            FaultCode.MOVING_AT_REST,
            StopKind.EMERGENCY,
            f"Belt measured moving at {measured_kmh:.2f} km/h{_source(step, measured_kmh)} "
            f"for {lasted_ms} ms while it should stand still ({state.mode.value})",
        )


def _check_link(step: _Step) -> None:
    """Link lost or set up again, degraded link, settle time for START (SR-LINK-1..3)."""
    link = step.inputs.link
    if link is None:
        return
    state = step.state
    adopted = state.link_session
    renewed = adopted is not None and link.session != adopted
    rebooted = (
        link.boot_id is not None and state.boot_id is not None and link.boot_id != state.boot_id
    )
    if rebooted:
        # The firmware's HELLO announced a new boot: that is the cause, the link loss that
        # goes with it only its consequence (SR-FW-2).
        _latch(
            step,
            FaultCode.FIRMWARE_REBOOT,
            StopKind.CONTROLLED,
            f"The motor controller restarted (boot id {state.boot_id} -> {link.boot_id})",
        )
    elif (not link.up or renewed) and state.mode is not Mode.IDLE:
        # The belt may move (RUNNING, STOPPING) or a fault is latched: motion never resumes
        # on a reconnect; only RESET and START bring it back (SR-LINK-1).
        why = (
            "the serial link is down"
            if not link.up
            else f"the serial link was set up again (session {adopted} -> {link.session})"
        )
        _latch(step, FaultCode.LINK_STALE, StopKind.CONTROLLED, f"Firmware link lost: {why}")
    if adopted is None or step.state.mode is Mode.IDLE:
        step.state = replace(step.state, link_session=link.session)
    settled = link.up and not renewed and step.fresh is not None
    since_ms = state.link_settled_since_ms if settled else None
    if settled and since_ms is None:
        since_ms = step.now_ms
    step.state = replace(step.state, link_settled_since_ms=since_ms)
    _check_link_quality(step, link)


def _check_link_quality(step: _Step, link: LinkHealth) -> None:
    """Share of the firmware's frames missed per window above ``link_loss_max`` (SR-LINK-3)."""
    config = step.config
    window = step.state.link_window
    now_ms = step.now_ms
    current = (now_ms, link.frames_received, link.frames_missed)
    if (
        window is None
        or now_ms < window[0]
        or link.frames_received < window[1]
        or link.frames_missed < window[2]
    ):
        step.state = replace(step.state, link_window=current)
        return
    elapsed_ms = now_ms - window[0]
    if elapsed_ms < config.link_window_ms:
        return
    step.state = replace(step.state, link_window=current)
    received = link.frames_received - window[1]
    missed = link.frames_missed - window[2]
    sent = received + missed
    if sent < config.link_window_min_frames or missed <= config.link_loss_max * sent:
        return
    _latch(
        step,
        FaultCode.LINK_STALE,
        StopKind.CONTROLLED,
        f"Firmware link degraded: {missed} of {sent} frames from the motor controller lost in "
        f"the last {elapsed_ms} ms ({100.0 * missed / sent:.0f} %, limit "
        f"{100.0 * config.link_loss_max:.0f} %)",
    )


def _check_link_and_firmware(step: _Step) -> None:
    """Stale or invalid status, firmware fault, reboot, config mismatch (SR-STALE-*, SR-FW-*)."""
    firmware = step.inputs.firmware
    config = step.config
    if firmware is None:
        _latch(
            step,
            FaultCode.LINK_STALE,
            StopKind.CONTROLLED,
            "Motor controller silent: no firmware status has been received",
        )
        return
    age_ms = step.now_ms - firmware.received_ms
    if not firmware_fresh(firmware, config, step.now_ms):
        _latch(
            step,
            FaultCode.LINK_STALE,
            StopKind.CONTROLLED,
            f"Motor controller silent: the last firmware status is {age_ms} ms old "
            f"(limit {config.stale_ms} ms)",
        )
    elif step.fresh is None:
        _latch(
            step,
            FaultCode.NOT_FOLLOWING,
            StopKind.CONTROLLED,
            f"Speed sensor: the measured belt speed {firmware.measured_kmh!r} km/h is not a "
            "valid reading",
        )
    if firmware.fault_code != 0 or firmware.state is FirmwareState.FAULT:
        stop = (
            StopKind.EMERGENCY
            if firmware.fault_code in config.firmware_emergency_fault_codes
            else StopKind.CONTROLLED
        )
        _latch(
            step,
            FaultCode.FIRMWARE_FAULT,
            stop,
            f"The motor controller reports fault code {firmware.fault_code} "
            f"(state {firmware.state.value})",
            follows=_firmware_fault_follows(step.state, firmware.fault_code),
        )
    if step.state.boot_id is None:
        step.state = replace(step.state, boot_id=firmware.boot_id)
    elif firmware.boot_id != step.state.boot_id:
        _latch(
            step,
            FaultCode.FIRMWARE_REBOOT,
            StopKind.CONTROLLED,
            f"The motor controller restarted (boot id {step.state.boot_id} -> {firmware.boot_id})",
        )
    if firmware.config_checksum != firmware.expected_config_checksum:
        _latch(
            step,
            FaultCode.CONFIG_MISMATCH,
            StopKind.CONTROLLED,
            f"The motor controller's configuration checksum 0x{firmware.config_checksum:08x} "
            f"differs from the one sent, 0x{firmware.expected_config_checksum:08x}",
        )


def _ramp_rate_kmh_s(state: CoreState, config: SafetyConfig) -> float:
    """Rate at which the commanded speed is moving now (for the follow lag allowance)."""
    if state.mode is Mode.RUNNING:
        stage = stage_config(state, config)
        goal_kmh = _goal_kmh(state, config)
        if state.commanded_kmh < goal_kmh:
            return stage.accel_kmh_s
        if state.commanded_kmh > goal_kmh:
            return stage.decel_kmh_s
        return 0.0
    return config.stop_decel_kmh_s  # STOPPING or FAULTED: the stop ramp


def _check_following(step: _Step) -> None:
    """Belt not following the commanded ramp for > follow_ms: stop and latch (SR-PLAUS-2)."""
    fresh = step.fresh
    state = step.state
    config = step.config
    fault = state.fault
    watched = state.mode in (Mode.RUNNING, Mode.STOPPING) or (
        fault is not None and fault.stop is StopKind.CONTROLLED and not state.fault_rest_reached
    )
    if fresh is None or not watched:
        step.state = replace(step.state, follow_since_ms=None)
        return
    expected_kmh = state.commanded_kmh
    if state.mode is not Mode.RUNNING and expected_kmh == 0.0:
        # The stop ramp is over: the belt must now come to rest, not just stay near it.
        tolerance_kmh = config.standstill_kmh
    else:
        lag_kmh = _ramp_rate_kmh_s(state, config) * config.follow_lag_ms / 1000.0
        tolerance_kmh = max(config.follow_tol_kmh, config.follow_rel * expected_kmh) + lag_kmh
    # Too fast is judged on the higher channel, too slow on the lower (SR-CHAN-3).
    high_kmh = fresh.measured_kmh if step.high_kmh is None else step.high_kmh
    low_kmh = fresh.measured_kmh if step.low_kmh is None else step.low_kmh
    too_fast = high_kmh - expected_kmh > tolerance_kmh
    # A belt at rest while clearly commanded to move is stalled, even below the tolerance.
    stalled = expected_kmh > 2.0 * config.standstill_kmh and low_kmh <= config.standstill_kmh
    too_slow = state.mode is Mode.RUNNING and (expected_kmh - low_kmh > tolerance_kmh or stalled)
    if not (too_fast or too_slow):
        step.state = replace(step.state, follow_since_ms=None)
        return
    since_ms = state.follow_since_ms if state.follow_since_ms is not None else step.now_ms
    step.state = replace(step.state, follow_since_ms=since_ms)
    lasted_ms = step.now_ms - since_ms
    if lasted_ms <= config.follow_ms:
        return
    shown_kmh = high_kmh if too_fast else low_kmh
    seen = f"Belt measured at {shown_kmh:.2f} km/h{_source(step, shown_kmh)} for {lasted_ms} ms, "
    if too_fast:
        seen += f"above the expected {expected_kmh:.2f} km/h by more than {tolerance_kmh:.2f} km/h"
    else:
        seen += (
            f"below the expected {expected_kmh:.2f} km/h (stalled, or more than "
            f"{tolerance_kmh:.2f} km/h behind)"
        )
    _latch(
        step,
        FaultCode.NOT_FOLLOWING,
        StopKind.EMERGENCY if too_fast else StopKind.CONTROLLED,
        seen,
    )


def _source(step: _Step, speed_kmh: float) -> str:
    """`` (Pi belt sensor)`` when ``speed_kmh`` is the second channel's reading and not the
    firmware's; empty otherwise, so single-channel messages read as before."""
    fresh = step.fresh
    if fresh is None or fresh.measured_kmh != speed_kmh:
        return " (Pi belt sensor)"
    return ""


def channel_tolerance_kmh(
    state: CoreState, config: SafetyConfig, channel: ChannelConfig, high_kmh: float
) -> float:
    """How far the two speed channels may differ now (SR-CHAN-2): max(abs, rel x the higher
    reading) plus the present ramp rate x the lag allowed between the channels."""
    lag_kmh = _ramp_rate_kmh_s(state, config) * channel.agree_lag_ms / 1000.0
    return max(channel.agree_abs_kmh, channel.agree_rel * high_kmh) + lag_kmh


def _check_channels(step: _Step) -> None:
    """The firmware's speed reading and the Pi's own belt sensor (SR-CHAN-1, SR-CHAN-2).

    A configured second channel without a valid reading latches ``belt_sensor`` (controlled
    stop); two usable readings further apart than the tolerance for longer than
    ``disagree_ms`` latch ``channels_disagree`` with an emergency stop. Watched in every mode.
    """
    config = step.config
    channel = config.second_channel
    if channel is None:
        return
    reading = step.inputs.belt_sensor
    if reading is None or not _reading_valid(reading):
        shown = "no reading" if reading is None else f"{reading.speed_kmh!r} km/h"
        _latch(
            step,
            FaultCode.BELT_SENSOR,
            StopKind.CONTROLLED,
            f"The Pi's belt sensor gave {shown}, not a valid speed reading",
        )
        step.state = replace(step.state, disagree_since_ms=None)
        return
    fresh = step.fresh
    state = step.state
    if fresh is None:
        step.state = replace(step.state, disagree_since_ms=None)
        return
    firmware_kmh = fresh.measured_kmh
    sensor_kmh = reading.speed_kmh
    high_kmh = max(firmware_kmh, sensor_kmh)
    tolerance_kmh = channel_tolerance_kmh(state, config, channel, high_kmh)
    if abs(firmware_kmh - sensor_kmh) <= tolerance_kmh:
        step.state = replace(step.state, disagree_since_ms=None)
        return
    since_ms = state.disagree_since_ms if state.disagree_since_ms is not None else step.now_ms
    step.state = replace(step.state, disagree_since_ms=since_ms)
    lasted_ms = step.now_ms - since_ms
    if lasted_ms > channel.disagree_ms:
        _latch(
            step,
            FaultCode.CHANNELS_DISAGREE,
            StopKind.EMERGENCY,
            f"The belt speed channels disagree for {lasted_ms} ms: the motor controller reads "
            f"{firmware_kmh:.2f} km/h, the Pi's belt sensor {sensor_kmh:.2f} km/h (allowed "
            f"difference {tolerance_kmh:.2f} km/h)",
        )


def _check_grip(step: _Step) -> None:
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
        _latch(
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
                f"grip back at stage {stage.number} ({_grip_text(step.inputs)}): "
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
    seen = (
        f"Grip released for {lost_ms} ms at stage {stage.number} ({stage.name}; "
        f"{_hands_text(stage.grip_hands_required)} required, grace {stage.grip_grace_ms} ms; "
        f"{_grip_text(step.inputs)})"
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
        _latch(step, FaultCode.GRIP_LOST, StopKind.CONTROLLED, seen)
        return
    step.state = replace(step.state, grip_action_taken=True)
    if stage.on_grip_loss is GripLossAction.SLOW:
        target_kmh = min(state.target_kmh, stage.grip_slow_kmh)
        step.state = replace(step.state, target_kmh=target_kmh)
        step.emit(
            "grip_lost",
            f"{seen}: slowing to {target_kmh:.2f} km/h. Hold the rails; then raise the speed "
            "again if you wish.",
            **details,
        )
        return
    step.emit("grip_warning", f"{seen}: hold the rails.", **details)


def _handle_commands(step: _Step) -> None:
    """Remote commands first, then local ones in order (SR-REMOTE-*, SR-START-*, ...)."""
    commands: tuple[LocalCommand | RemoteCommand, ...] = (*step.inputs.remote, *step.inputs.local)
    step.stop_requested = any(
        isinstance(command, RemoteStop | RequestStop) or command == Press(Button.STOP)
        for command in commands
    )
    for remote in step.inputs.remote:
        _remote_command(step, remote)
    for local in step.inputs.local:
        _local_command(step, local)


def _sentence(prefix: str, reasons: tuple[str, ...]) -> str:
    """``prefix: reason; reason.`` (reasons carry no full stop of their own)."""
    return f"{prefix}: " + "; ".join(reasons) + "."


def _reject(step: _Step, command: str, reason: str) -> None:
    step.emit("command_rejected", f"{command} rejected: {reason}", command=command, reason=reason)


def _remote_command(step: _Step, command: RemoteCommand) -> None:
    """Remote commands can only make things safer (SR-REMOTE-1..4)."""
    if isinstance(command, RemoteStop):
        _request_stop(step, "remote_stop")
        return
    state = step.state
    if isinstance(command, RemoteLowerTarget):
        speed_kmh = command.speed_kmh + 0.0  # -0.0 becomes 0.0 (SR-REMOTE-2)
        if not (math.isfinite(speed_kmh) and 0.0 <= speed_kmh < state.target_kmh):
            _reject(
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
        _reject(
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
    _apply_stage_caps(step, "remote stage cap")


def _local_command(step: _Step, command: LocalCommand) -> None:
    """Console buttons, console target and stage selection, service stop requests."""
    if isinstance(command, RequestStop):
        _request_stop(step, command.reason)
    elif isinstance(command, SetTarget):
        _local_target(step, command.speed_kmh, "console target")
    elif isinstance(command, SelectStage):
        _select_stage(step, command.stage)
    else:
        _press(step, command.button)


def _press(step: _Step, button: Button) -> None:
    state = step.state
    if button is Button.START:
        _start(step)
    elif button is Button.STOP:
        _request_stop(step, "stop_button")
    elif button is Button.FASTER:
        _local_target(step, state.target_kmh + step.config.speed_step_kmh, "faster")
    elif button is Button.SLOWER:
        _local_target(step, max(state.target_kmh - step.config.speed_step_kmh, 0.0), "slower")
    elif button is Button.STAGE_UP:
        _select_stage(step, state.stage + 1)
    elif button is Button.STAGE_DOWN:
        _select_stage(step, state.stage - 1)
    else:
        _reset(step)


def _start(step: _Step) -> None:
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
        step.emit("start_refused", _sentence("start refused", reasons), reasons=" | ".join(reasons))
        return
    stage = stage_config(state, step.config)
    target_kmh = min(max(state.target_kmh, stage.start_kmh), speed_cap_kmh(state, step.config))
    step.state = replace(
        step.state,
        target_kmh=target_kmh,
        stop_reason=None,
        grip_changed_ms=step.now_ms,
    )
    _enter(step, Mode.RUNNING, "start_button")
    step.emit(
        "started",
        f"belt started at stage {stage.number} ({stage.name}): ramping to {target_kmh:.2f} km/h "
        f"at {stage.accel_kmh_s:.2f} km/h/s, limit "
        f"{stage_limit_kmh(stage, step.config):.1f} km/h",
        stage=stage.number,
        target_kmh=target_kmh,
    )


def _request_stop(step: _Step, reason: str) -> None:
    """STOP button, service stop and remote stop: RUNNING -> STOPPING (SR-STOP-1, SR-STOP-3)."""
    if step.state.mode is Mode.RUNNING:
        step.state = replace(step.state, stop_reason=reason)
        _enter(step, Mode.STOPPING, reason)


def _set_target(step: _Step, target_kmh: float, source: str) -> None:
    old = step.state.target_kmh
    step.state = replace(step.state, target_kmh=target_kmh)
    step.emit(
        "target_changed",
        f"target {old:.2f} -> {target_kmh:.2f} km/h ({source})",
        from_kmh=old,
        to_kmh=target_kmh,
        source=source,
    )


def _local_target(step: _Step, speed_kmh: float, source: str) -> None:
    """Local target: clamped to [0, cap]; raising only in IDLE or RUNNING (SR-SPEED-4)."""
    state = step.state
    if not (math.isfinite(speed_kmh) and speed_kmh >= 0.0):
        _reject(step, source, f"{speed_kmh!r} km/h is not a speed (0 or more)")
        return
    cap_kmh = speed_cap_kmh(state, step.config)
    target_kmh = min(round(speed_kmh, 6) + 0.0, cap_kmh)  # + 0.0: -0.0 becomes 0.0
    if target_kmh > state.target_kmh and state.mode not in (Mode.IDLE, Mode.RUNNING):
        _reject(step, source, f"the speed cannot be raised while {state.mode.value}")
        return
    if target_kmh == state.target_kmh:
        if speed_kmh > cap_kmh:
            _reject(step, source, f"the limit is {cap_kmh:.2f} km/h at stage {state.stage}")
        return
    _set_target(step, target_kmh, source)


def _select_stage(step: _Step, stage: int) -> None:
    """Lower in any mode; raise only in IDLE and up to the stage cap (SR-STAGE-1..3)."""
    state = step.state
    config = step.config
    if not 1 <= stage <= len(config.stages):
        _reject(step, "stage", f"stage {stage} does not exist (1 to {len(config.stages)})")
        return
    if stage < state.stage:
        _change_stage(step, stage, "stage lowered at the console")
        return
    if stage == state.stage:
        return
    cap = effective_stage_cap(state, step.inputs, config)
    if state.mode is not Mode.IDLE:
        _reject(
            step, "stage", f"the stage can only be raised with the belt idle ({state.mode.value})"
        )
    elif stage > cap:
        _reject(step, "stage", f"stage {stage} is above the allowed stage {cap}")
    else:
        _change_stage(step, stage, "stage raised at the console")


def _reset(step: _Step) -> None:
    """Local RESET: FAULTED -> IDLE at rest, never starting the belt (SR-RESET-1..5)."""
    state = step.state
    inputs = step.inputs
    fault = state.fault
    if fault is None:
        if state.mode is Mode.IDLE and state.remote_stage_cap is not None:
            step.state = replace(step.state, remote_stage_cap=None)
            step.emit(
                "stage_cap_changed",
                f"remote stage cap {state.remote_stage_cap} cleared by RESET at the console",
                from_cap=state.remote_stage_cap,
                to_cap=None,
            )
        return
    problems = reset_blockers(state, inputs, step.config, step.now_ms)
    firmware = inputs.firmware
    if problems or firmware is None:
        step.state = replace(step.state, reset_armed_ms=None)
        step.emit(
            "reset_refused",
            _sentence("reset refused", problems),
            reasons=" | ".join(problems),
            fault=fault.code.value,
        )
        return
    if firmware.fault_code != 0 or firmware.state is FirmwareState.FAULT:
        step.clear_firmware_fault = True
        step.state = replace(step.state, reset_armed_ms=step.now_ms)
        step.emit(
            "reset_pending",
            f"the motor controller reports fault code {firmware.fault_code}: sent CLEAR_FAULT; "
            "the reset completes as soon as it has cleared",
            firmware_fault=firmware.fault_code,
        )
        return
    _complete_reset(step, fault, firmware)


def _continue_reset(step: _Step) -> None:
    """A RESET waiting for the firmware to clear its fault completes once it has, if every
    reset condition still holds; else it is refused (SR-RESET-3). A RESET pressed in this
    tick is handled by :func:`_reset` instead."""
    state = step.state
    armed_ms = state.reset_armed_ms
    fault = state.fault
    if armed_ms is None or fault is None or Press(Button.RESET) in step.inputs.local:
        return
    problems = reset_blockers(state, step.inputs, step.config, step.now_ms)
    firmware = step.inputs.firmware
    if problems or firmware is None:
        step.state = replace(step.state, reset_armed_ms=None)
        step.emit(
            "reset_refused",
            _sentence("reset refused", problems),
            reasons=" | ".join(problems),
            fault=fault.code.value,
        )
        return
    if firmware.fault_code == 0 and firmware.state is not FirmwareState.FAULT:
        _complete_reset(step, fault, firmware)
        return
    if step.now_ms - armed_ms > RESET_CLEAR_TIMEOUT_MS:
        step.state = replace(step.state, reset_armed_ms=None)
        reason = (
            f"the motor controller still reports fault code {firmware.fault_code} "
            f"{RESET_CLEAR_TIMEOUT_MS} ms after CLEAR_FAULT: read its fault code in the log, "
            "fix the cause, then press RESET"
        )
        step.emit(
            "reset_refused",
            _sentence("reset refused", (reason,)),
            reasons=reason,
            fault=fault.code.value,
        )


def _complete_reset(step: _Step, fault: Fault, firmware: FirmwareStatus) -> None:
    """FAULTED -> IDLE: the fault record cleared, the belt stays stopped (SR-RESET-4)."""
    state = step.state
    stage = stage_config(state, step.config)
    step.state = replace(
        step.state,
        fault=None,
        secondary_faults=(),
        fault_rest_reached=False,
        reset_armed_ms=None,
        stop_reason=None,
        target_kmh=min(stage.start_kmh, stage_limit_kmh(stage, step.config)),
        boot_id=firmware.boot_id,
        link_session=link.session if (link := step.inputs.link) is not None else state.link_session,
    )
    # The speed timers are already clear: a reset needs the belt measured at rest. The
    # commanded speed drops to 0 in the ramp step, as in every IDLE tick.
    step.reset_done = True
    _enter(step, Mode.IDLE, "reset")
    step.emit(
        "fault_cleared",
        f"fault {fault.code.value} cleared by RESET; the belt stays stopped until START",
        code=fault.code.value,
    )


def _stop_on_zero_target(step: _Step) -> None:
    """A target at or below standstill while RUNNING is a controlled stop (SR-SPEED-5)."""
    if step.state.mode is Mode.RUNNING and step.state.target_kmh <= step.config.standstill_kmh:
        step.state = replace(step.state, stop_reason="target_zero")
        _enter(step, Mode.STOPPING, "target_zero")


def _settle(step: _Step) -> None:
    """STOPPING -> IDLE at rest; remember when a FAULTED belt has come to rest (SR-STOP-2)."""
    fresh = step.fresh
    state = step.state
    config = step.config
    if (
        fresh is None
        or not belt_at_rest(fresh, config)
        or not second_channel_at_rest(step.inputs, config)
    ):
        return
    if state.mode is Mode.STOPPING:
        stage = stage_config(state, config)
        step.state = replace(
            step.state, target_kmh=min(stage.start_kmh, stage_limit_kmh(stage, config))
        )
    _reach_rest(step, fresh.measured_kmh)


def _reach_rest(step: _Step, speed_kmh: float) -> None:
    """The belt is at rest: STOPPING -> IDLE, or a FAULTED belt remembers rest (SR-STOP-2/3)."""
    state = step.state
    if state.mode is Mode.STOPPING:
        _enter(step, Mode.IDLE, "at_rest")
        step.emit(
            "stopped",
            f"belt at rest ({speed_kmh:.2f} km/h); stop reason: {state.stop_reason}",
            reason=state.stop_reason,
        )
    elif (
        state.mode is Mode.FAULTED
        and state.fault is not None
        and state.fault.since_ms < step.now_ms
        and not _emergency_input(step.inputs)
    ):
        # At rest, with the e-stop released and the key in, and not in the tick that latched
        # the fault (an emergency always sends ESTOP at least once): from now on the stop is
        # a plain Stop, so CLEAR_FAULT can clear the firmware's ESTOP latch (SR-STOP-3).
        step.state = replace(step.state, fault_rest_reached=True)


def _goal_kmh(state: CoreState, config: SafetyConfig) -> float:
    return max(0.0, min(state.target_kmh, speed_cap_kmh(state, config)))


def _ramp(step: _Step, dt_ms: int) -> None:
    """Move the commanded speed toward its goal within the rate limits (SR-SPEED-2)."""
    state = step.state
    config = step.config
    dt_s = dt_ms / 1000.0
    commanded_kmh = state.commanded_kmh
    if state.mode is Mode.RUNNING:
        stage = stage_config(state, config)
        goal_kmh = _goal_kmh(state, config)
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


def _motion(state: CoreState, config: SafetyConfig, previous_kmh: float) -> MotionCommand:
    """Exactly one motion command per tick, chosen by mode (SR-MOTION-1)."""
    if state.mode is Mode.RUNNING:
        stage = stage_config(state, config)
        # Falling only when the speed on the wire falls: a change below the wire resolution
        # reaches the firmware as its present set-point, which FW-4 treats as holding.
        falling = wire_speed_kmh(state.commanded_kmh) < wire_speed_kmh(previous_kmh)
        rate = stage.decel_kmh_s if falling else stage.accel_kmh_s
        return SetSpeed(speed_kmh=state.commanded_kmh, accel_kmh_s=rate, lease_ms=config.lease_ms)
    return _stop_command(state, config)


def _stop_command(state: CoreState, config: SafetyConfig) -> MotionCommand:
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


# --------------------------------------------------------------------------
# Key-relay (monitor) mode: the treadmill's own console drives the belt (SR-MON-*)
# --------------------------------------------------------------------------


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
            f"stage {stage.number} needs {_hands_text(stage.grip_hands_required)} on the rails "
            f"({_grip_text(inputs)}): hold the rails"
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
    if reading is None or not _reading_valid(reading):
        problems.append(
            f"the Pi's belt sensor gives {_belt_sensor_text(inputs)}: check its input and wiring"
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


def _decide_key_relay(
    state: CoreState, inputs: Inputs, config: SafetyConfig, relay: KeyRelayConfig, now_ms: int
) -> Decision:
    """One tick in key-relay mode: the relay is held (``Decision.key_relay``) only while
    RUNNING, and every fault, stop or failed check opens it (SR-MON-1..6)."""
    step = _Step(
        state=replace(state, last_tick_ms=now_ms),
        inputs=inputs,
        config=config,
        now_ms=now_ms,
        fresh=None,
    )
    reading = inputs.belt_sensor
    if reading is not None and _reading_valid(reading):
        step.high_kmh = step.low_kmh = reading.speed_kmh
    _apply_stage_caps(step, "stage cap lowered")
    _track_grip_sensor(step)
    if inputs.estop_pressed:
        _latch(step, FaultCode.ESTOP, StopKind.EMERGENCY, "E-stop pressed")
    if not inputs.safety_key_present:
        _latch(step, FaultCode.SAFETY_KEY, StopKind.EMERGENCY, "Safety key pulled out")
    _check_overspeed(step)
    _check_moving_at_rest(step)
    _relay_check_sensor(step, relay)
    _check_grip(step)
    _relay_commands(step)
    _relay_settle(step)
    return Decision(
        state=step.state,
        motion=_stop_command(step.state, config),
        key_relay=step.state.mode is Mode.RUNNING,
        events=tuple(step.events),
        belt_at_rest=step.state.mode in (Mode.IDLE, Mode.FAULTED)
        and step.high_kmh is not None
        and step.high_kmh <= config.standstill_kmh,
    )


def _relay_check_sensor(step: _Step, relay: KeyRelayConfig) -> None:
    """The Pi's belt sensor is the only speed reading in key-relay mode (SR-MON-4).

    An invalid reading latches ``belt_sensor``; a reading that falls faster than the belt can
    stop (``max_belt_decel_kmh_s``) is a sensor gone silent and latches it too. While
    RUNNING the belt must be seen moving within ``start_window_ms`` of START, and once it has
    moved, a reading at rest opens the relay (RUNNING -> IDLE): a silent sensor reads as
    rest, so it never hides a moving belt for longer than its stale time.
    """
    state = step.state
    reading = step.inputs.belt_sensor
    if reading is None or not _reading_valid(reading):
        shown = "no reading" if reading is None else f"{reading.speed_kmh!r} km/h"
        _latch(
            step,
            FaultCode.BELT_SENSOR,
            StopKind.CONTROLLED,
            f"The Pi's belt sensor gave {shown}, not a valid speed reading",
        )
        step.state = replace(step.state, relay_last=None)
        return
    speed_kmh = reading.speed_kmh
    last = state.relay_last
    # The slope is taken over at least RELAY_SLOPE_MS: one pulse period more or less moves a
    # pulse-timed reading by more than a belt can change in one tick.
    if last is None or step.now_ms - last[0] >= RELAY_SLOPE_MS:
        step.state = replace(step.state, relay_last=(step.now_ms, speed_kmh))
    if last is not None and step.now_ms - last[0] >= RELAY_SLOPE_MS:
        drop_kmh_s = (last[1] - speed_kmh) * 1000.0 / (step.now_ms - last[0])
        if drop_kmh_s > relay.max_belt_decel_kmh_s:
            _latch(
                step,
                FaultCode.BELT_SENSOR,
                StopKind.CONTROLLED,
                f"The Pi's belt sensor reading fell from {last[1]:.2f} to {speed_kmh:.2f} km/h "
                f"in {step.now_ms - last[0]} ms ({drop_kmh_s:.1f} km/h/s), faster than the "
                f"belt can stop ({relay.max_belt_decel_kmh_s:g} km/h/s): the sensor has failed",
            )
            return
    if step.state.mode is not Mode.RUNNING:
        return
    moving = speed_kmh > step.config.standstill_kmh
    if moving and not state.relay_motion_seen:
        step.state = replace(step.state, relay_motion_seen=True)
    elif not moving and state.relay_motion_seen:
        step.state = replace(step.state, stop_reason="belt_stopped")
        _enter(step, Mode.STOPPING, "belt_stopped")
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
        _enter(step, Mode.STOPPING, "no_motion")
        step.emit(
            "key_relay_opened",
            f"no belt motion seen within {relay.start_window_ms} ms of START: key relay "
            "opened. Press START, then start the belt at the treadmill's console (if the "
            "belt did move, check the Pi's belt sensor)",
            reason="no_motion",
        )


def _relay_commands(step: _Step) -> None:
    """Commands in key-relay mode: no speed can be set from here (SR-MON-5)."""
    commands: tuple[LocalCommand | RemoteCommand, ...] = (*step.inputs.remote, *step.inputs.local)
    step.stop_requested = any(
        isinstance(command, RemoteStop | RequestStop) or command == Press(Button.STOP)
        for command in commands
    )
    for remote in step.inputs.remote:
        if isinstance(remote, RemoteLowerTarget):
            _reject(
                step,
                "remote target",
                "in key-relay mode the speed is set at the treadmill's own console; use "
                "cmd/stop to stop the belt",
            )
        else:
            _remote_command(step, remote)
    for local in step.inputs.local:
        if isinstance(local, RequestStop):
            _request_stop(step, local.reason)
        elif isinstance(local, SelectStage):
            _select_stage(step, local.stage)
        elif isinstance(local, SetTarget) or local in (Press(Button.FASTER), Press(Button.SLOWER)):
            _reject(
                step,
                "speed",
                "in key-relay mode the speed is set at the treadmill's own console",
            )
        else:
            _relay_press(step, local.button)


def _relay_press(step: _Step, button: Button) -> None:
    if button is Button.START:
        _relay_start(step)
    elif button is Button.STOP:
        _request_stop(step, "stop_button")
    elif button is Button.STAGE_UP:
        _select_stage(step, step.state.stage + 1)
    elif button is Button.STAGE_DOWN:
        _select_stage(step, step.state.stage - 1)
    else:  # RESET (FASTER and SLOWER are rejected before)
        _relay_reset(step)


def _relay_start(step: _Step) -> None:
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
        step.emit("start_refused", _sentence("start refused", reasons), reasons=" | ".join(reasons))
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
    _enter(step, Mode.RUNNING, "start_button")
    step.emit(
        "started",
        f"key relay closed at stage {stage.number} ({stage.name}): start the belt at the "
        f"treadmill's console. Limit {limit:.1f} km/h: above it the key relay opens",
        stage=stage.number,
        target_kmh=limit,
    )


def _relay_reset(step: _Step) -> None:
    """Local RESET in key-relay mode: FAULTED -> IDLE at rest, never closing the relay."""
    state = step.state
    fault = state.fault
    if fault is None:
        if state.mode is Mode.IDLE and state.remote_stage_cap is not None:
            step.state = replace(step.state, remote_stage_cap=None)
            step.emit(
                "stage_cap_changed",
                f"remote stage cap {state.remote_stage_cap} cleared by RESET at the console",
                from_cap=state.remote_stage_cap,
                to_cap=None,
            )
        return
    problems = tuple(_relay_rest_blockers(state, step.inputs, step.config))
    if problems:
        step.emit(
            "reset_refused",
            _sentence("reset refused", problems),
            reasons=" | ".join(problems),
            fault=fault.code.value,
        )
        return
    step.state = replace(
        step.state, fault=None, secondary_faults=(), fault_rest_reached=False, stop_reason=None
    )
    step.reset_done = True
    _enter(step, Mode.IDLE, "reset")
    step.emit(
        "fault_cleared",
        f"fault {fault.code.value} cleared by RESET; the key relay stays open until START",
        code=fault.code.value,
    )


def _relay_settle(step: _Step) -> None:
    """STOPPING -> IDLE once the Pi's sensor reads rest; FAULTED remembers rest (SR-MON-3)."""
    speed_kmh = step.high_kmh
    if speed_kmh is None or speed_kmh > step.config.standstill_kmh:
        return
    _reach_rest(step, speed_kmh)
