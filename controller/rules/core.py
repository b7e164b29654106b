"""The safety core: :func:`decide`, the ordered composition of every rule that decides whether,
and how fast, the belt moves.

:func:`decide` is a pure function: it takes the previous :class:`CoreState`, the
:class:`Inputs` gathered in this tick, the :class:`SafetyConfig` and the time
``now_ms`` (integer milliseconds from a monotonic clock), and returns a
:class:`Decision`: the next state, exactly one motion command and the events to
report. It does no I/O, keeps no global state and reads no clock, so every rule
can be tested by driving it with explicit times.

Rule ids (``SR-...``) refer to ``docs/safety.md``, which also gives the tests that
prove each rule. The rules live in one module per concern, each named in its docstring
with its rule ids; this module only calls them, and its :func:`decide` is the one place
that shows the check order within one tick (SR-PREC-1):

1. stage caps (a lowered training or remote cap lowers the stage at once),
2. emergency conditions: e-stop, safety key, overspeed, belt moving at rest,
3. firmware link and firmware state: stale status, firmware fault, reboot,
   configuration mismatch, invalid speed reading; the second speed channel; then the
   not-following check,
4. grip,
5. commands: remote first, then local, in the order received,
6. settling (STOPPING -> IDLE at rest), the speed ramp and the motion command.

A fault latched by an earlier step is never undone by a later one. Key-relay (monitor)
mode has its own, shorter composition, :func:`_decide_key_relay` below (SR-MON-*).

Modules of the core, from the bottom: ``tick`` (the working record), ``faults``
(latching, mode changes), ``stages``, ``motion`` (ramp and motion command), ``grip``,
``emergencies``, ``plausibility``, ``firmware_status``, ``link``, ``channels``, ``rest``,
``readiness`` (start and reset conditions), ``reset``, ``commands``, ``key_relay`` and
``timers`` (the next deadline).

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

from controller.rules.channels import (
    channel_speeds_kmh,
    check_channels,
    reading_valid,
    second_channel_at_rest,
)
from controller.rules.commands import handle_commands
from controller.rules.emergencies import check_emergency_inputs
from controller.rules.faults import latch
from controller.rules.firmware_status import check_firmware, firmware_fresh, status_problem
from controller.rules.grip import check_grip, track_grip_sensor
from controller.rules.key_relay import (
    check_relay_emergency_inputs,
    check_relay_sensor,
    relay_commands,
    relay_settle,
)
from controller.rules.link import check_link, link_settled
from controller.rules.model import (
    CoreState,
    Decision,
    FaultCode,
    Inputs,
    KeyRelayConfig,
    Mode,
    SafetyConfig,
    StopKind,
)
from controller.rules.motion import motion_command, ramp, stop_command, tick_dt_ms
from controller.rules.plausibility import check_following, check_moving_at_rest, check_overspeed
from controller.rules.readiness import reset_blockers, start_blockers
from controller.rules.reset import continue_reset
from controller.rules.rest import at_rest, settle, stop_on_zero_target
from controller.rules.stages import apply_stage_caps, change_stage, stage_limit_kmh
from controller.rules.tick import Record, Step, replace
from controller.rules.timers import next_deadline_ms

# The entry points, and the verdicts the service, telemetry and user interfaces take from the
# core (each defined once, in the module it is imported from above).
__all__ = [
    "decide",
    "firmware_fresh",
    "initial_state",
    "internal_fault",
    "link_settled",
    "next_deadline_ms",
    "reset_blockers",
    "start_blockers",
]


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
    dt_ms = tick_dt_ms(state.last_tick_ms, now_ms)
    step = Step(
        state=replace(state, last_tick_ms=now_ms),
        inputs=inputs,
        config=config,
        now_ms=now_ms,
        fresh=inputs.firmware if status_problem(inputs.firmware, config, now_ms) is None else None,
    )
    step.high_kmh, step.low_kmh = channel_speeds_kmh(step.fresh, inputs, config)
    # 1. Stage caps (SR-STAGE-4); the grip sensor's own health is tracked every tick.
    if step.state.stage > len(config.stages):
        change_stage(step, len(config.stages), "stage not in the reloaded configuration")
    apply_stage_caps(step, "stage cap lowered")
    track_grip_sensor(step)
    # 2. Emergencies: e-stop and safety key, overspeed and runaway, moving at rest.
    check_emergency_inputs(step)
    check_overspeed(step)
    check_moving_at_rest(step)
    # 3. Firmware link and status, the second speed channel, then not following.
    check_link(step)
    check_firmware(step)
    check_channels(step)
    check_following(step)
    # 4. Grip.
    check_grip(step)
    # 5. Commands: a RESET waiting for the firmware, then remote and local commands.
    continue_reset(step)
    handle_commands(step)
    # 6. Settling, the ramp and the motion command.
    stop_on_zero_target(step)
    settle(step)
    previous_kmh = step.state.commanded_kmh
    ramp(step, dt_ms)
    return Decision(
        state=step.state,
        motion=motion_command(
            step.state,
            config,
            previous_kmh,
            None if step.fresh is None else step.fresh.commanded_kmh,
        ),
        clear_firmware_fault=step.clear_firmware_fault,
        events=tuple(step.events),
        belt_at_rest=at_rest(step.state, step.fresh, config)
        and second_channel_at_rest(inputs, config),
        firmware_fresh=firmware_fresh(inputs.firmware, config, now_ms),
        next_deadline_ms=next_deadline_ms(step.state, inputs, config),
        channels_agree=step.channels_agree,
    )


def _decide_key_relay(
    state: CoreState, inputs: Inputs, config: SafetyConfig, relay: KeyRelayConfig, now_ms: int
) -> Decision:
    """One tick in key-relay mode: the relay is held (``Decision.key_relay``) only while
    RUNNING, and every fault, stop or failed check opens it (SR-MON-1..5)."""
    step = Step(
        state=replace(state, last_tick_ms=now_ms),
        inputs=inputs,
        config=config,
        now_ms=now_ms,
        fresh=None,
    )
    reading = inputs.belt_sensor
    if reading is not None and reading_valid(reading):
        step.high_kmh = step.low_kmh = reading.speed_kmh
    apply_stage_caps(step, "stage cap lowered")
    track_grip_sensor(step)
    check_relay_emergency_inputs(step)
    check_overspeed(step)
    check_moving_at_rest(step)
    check_relay_sensor(step, relay)
    check_grip(step)
    relay_commands(step)
    relay_settle(step)
    return Decision(
        state=step.state,
        motion=stop_command(step.state, config),
        key_relay=step.state.mode is Mode.RUNNING,
        events=tuple(step.events),
        belt_at_rest=step.state.mode in (Mode.IDLE, Mode.FAULTED)
        and step.high_kmh is not None
        and step.high_kmh <= config.standstill_kmh,
        next_deadline_ms=next_deadline_ms(step.state, inputs, config),
    )


def internal_fault(state: CoreState, config: SafetyConfig, now_ms: int, message: str) -> Decision:
    """Latch FaultCode.INTERNAL with a controlled stop (SR-FAULT-4).

    For the service's single catch-all: an exception anywhere in a tick ends here.
    """
    record = Record(state=state, now_ms=now_ms)
    latch(record, FaultCode.INTERNAL, StopKind.CONTROLLED, message)
    return Decision(
        state=record.state,
        motion=stop_command(record.state, config),
        events=tuple(record.events),
    )
