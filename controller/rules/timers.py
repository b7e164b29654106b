"""When the next timer of the core runs out (:func:`next_deadline_ms`), so the service wakes the
core then and not only at its next tick (SR-TIMER-1).
"""

from __future__ import annotations

from controller.rules.channels import reading_valid
from controller.rules.emergencies import emergency_input
from controller.rules.firmware_status import status_problem
from controller.rules.grip import WARNING_GRIP_STUCK, WARNING_GRIP_SUSPECT, grip_watched
from controller.rules.key_relay import RELAY_SLOPE_MS
from controller.rules.model import (
    CoreState,
    GripLossAction,
    Inputs,
    KeyRelayConfig,
    Mode,
    SafetyConfig,
)
from controller.rules.plausibility import runaway_confirm_ms
from controller.rules.reset import RESET_CLEAR_TIMEOUT_MS
from controller.rules.rest import belt_at_rest
from controller.rules.stages import stage_config


def next_deadline_ms(state: CoreState, inputs: Inputs, config: SafetyConfig) -> int | None:
    """When the next running timer runs out: the earliest time after ``state.last_tick_ms``
    at which :func:`decide`, given the same inputs (no new commands, the same firmware
    status), would decide differently; None when no timer runs.

    The caller wakes then, in addition to its regular ticks, so a timer acts when it runs out
    instead of at the next tick: the grip grace (SR-GRIP-2), the stale status (SR-STALE-1),
    overspeed, not following and moving at rest (SR-PLAUS-1..3), the runaway confirmation
    (SR-PLAUS-5), the speed channels disagreeing (SR-CHAN-2), the grip chatter window, the
    stuck-grip warning and a touch becoming a hold (SR-GRIP-6, 7, 10), the link-quality window
    (SR-LINK-3), a reset waiting for CLEAR_FAULT (SR-RESET-3), the first tick at rest after
    an emergency (SR-STOP-3) and, in key-relay mode, the start window and a falling reading's
    span (SR-MON-4). It may be early (then the decision is the same), never late.
    Computed from the state the tick produced, the inputs and the config only.
    """
    now_ms = state.last_tick_ms
    firmware = inputs.firmware
    candidates: list[int] = []
    if firmware is not None:
        candidates.append(firmware.received_ms + config.stale_ms + 1)
    if state.mode is Mode.RUNNING:
        candidates.extend(_running_grip_deadlines_ms(state, config, now_ms))
    edges = state.grip_edges_ms
    if len(edges) >= config.grip_chatter_edges:
        candidates.append(edges[-config.grip_chatter_edges] + config.grip_chatter_window_ms)
    candidates.extend(_duration_deadlines_ms(state, config, now_ms))
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
        and not emergency_input(inputs)
    ):
        candidates.append(fault.since_ms + 1)
    if config.key_relay is not None:
        candidates.extend(_relay_deadlines_ms(state, inputs, config.key_relay))
    later = [t for t in candidates if now_ms is None or t > now_ms]
    return min(later) if later else None


def _duration_deadlines_ms(state: CoreState, config: SafetyConfig, now_ms: int | None) -> list[int]:
    """The duration rules' timers: overspeed, not following, moving at rest, the runaway
    confirmation and the speed channels disagreeing (SR-PLAUS-1, 2, 3, 5, SR-CHAN-2)."""
    soonest_ms = 0 if now_ms is None else now_ms + 1
    held = [
        (state.overspeed_since_ms, state.overspeed_clear_since_ms, config.overspeed_ms),
        (state.follow_since_ms, state.follow_clear_since_ms, config.follow_ms),
        (
            state.moving_at_rest_since_ms,
            state.moving_at_rest_clear_since_ms,
            config.moving_at_rest_ms,
        ),
    ]
    if config.second_channel is not None:
        held.append(
            (
                state.disagree_since_ms,
                state.disagree_clear_since_ms,
                config.second_channel.disagree_ms,
            )
        )
    deadlines = [
        _held_deadline_ms(since_ms, clear_ms, limit_ms, soonest_ms)
        for since_ms, clear_ms, limit_ms in held
        if since_ms is not None
    ]
    if state.runaway_suspect is not None:
        deadlines.append(state.runaway_suspect[0] + runaway_confirm_ms(config) + 1)
    return deadlines


def _held_deadline_ms(since_ms: int, clear_ms: int | None, limit_ms: int, soonest_ms: int) -> int:
    """When a duration timer (``tick.held_timer``) can act: one ms past its limit. A timer held
    through a clear spell (``clear_ms`` set) latches at the first tick its condition is seen
    again once past the limit, and a change made later in this tick (a lower stage or cap, a
    falling ramp, a mode change) can make the same reading bad: past its limit, such a timer
    can act at the next possible millisecond. It is held for at most ``CLEAR_HOLD_MS``."""
    due_ms = since_ms + limit_ms + 1
    return due_ms if clear_ms is None else max(due_ms, soonest_ms)


def _running_grip_deadlines_ms(
    state: CoreState, config: SafetyConfig, now_ms: int | None
) -> list[int]:
    """The grip timers that run only while RUNNING: the grace or the touch becoming a hold,
    a chattering sensor at a latching stage and the stuck-grip warning (SR-GRIP-2, 6, 7, 10)."""
    stage = stage_config(state, config)
    deadlines: list[int] = []
    # These two have not acted yet (they would have latched, slowed, warned or flagged),
    # even if their time has passed: a stage change by a command later in the tick can
    # make one due at once (SR-GRIP-8), so it acts at the next possible millisecond.
    soonest_ms = 0 if now_ms is None else now_ms + 1
    lost_ms = state.grip_lost_since_ms
    held_ms = state.grip_held_since_ms
    if lost_ms is not None and held_ms is not None:
        # A touch during a loss: nothing acts until it has become a hold (SR-GRIP-10).
        deadlines.append(max(held_ms + config.grip_regrip_ms, soonest_ms))
    elif lost_ms is not None and not state.grip_action_taken:
        deadlines.append(max(lost_ms + stage.grip_grace_ms, soonest_ms))
    if (
        WARNING_GRIP_SUSPECT in state.warnings
        and grip_watched(stage)
        and stage.on_grip_loss is GripLossAction.STOP_LATCH
    ):
        # A chattering sensor at a stage that latches on grip loss latches at the next
        # grip check (SR-GRIP-6); a stage lowered by a command later in the tick makes
        # that the next millisecond.
        deadlines.append(soonest_ms)
    if (
        grip_watched(stage)
        and state.grip_changed_ms is not None
        and WARNING_GRIP_STUCK not in state.warnings
    ):
        deadlines.append(max(state.grip_changed_ms + config.grip_stuck_window_ms, soonest_ms))
    return deadlines


def _relay_deadlines_ms(state: CoreState, inputs: Inputs, relay: KeyRelayConfig) -> list[int]:
    """Key-relay mode's own timers (SR-MON-4): the end of the start window, and the end of
    the span over which a reading below the last judged one is judged (early when it falls
    slowly enough: then nothing changes). The first tick at rest after an emergency needs no
    deadline here: every emergency that latches with the belt at rest in this mode is an
    e-stop or a missing key, and while that input stays, rest is not reached (SR-STOP-3)."""
    deadlines: list[int] = []
    if (
        state.mode is Mode.RUNNING
        and not state.relay_motion_seen
        and state.relay_armed_ms is not None
    ):
        deadlines.append(state.relay_armed_ms + relay.start_window_ms + 1)
    reading = inputs.belt_sensor
    if reading is None or not reading_valid(reading):
        return deadlines
    last = state.relay_last
    if last is not None and reading.speed_kmh < last[1]:
        deadlines.append(last[0] + RELAY_SLOPE_MS)
    return deadlines
