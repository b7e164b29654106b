"""Plausibility of the measured belt speed: overspeed with the runaway rule, a belt moving when it
should stand still, and a belt not following its command (SR-PLAUS-1, 2, 3, 5).
"""

from __future__ import annotations

from controller.rules.faults import latch
from controller.rules.model import FaultCode, Mode, SafetyConfig, StopKind
from controller.rules.motion import ramp_rate_kmh_s
from controller.rules.stages import stage_config, stage_limit_kmh
from controller.rules.tick import Step, held_timer, replace


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


def runaway_confirm_ms(config: SafetyConfig) -> int:
    """How long a suspected runaway must keep rising before it latches: half the runaway
    window (SR-PLAUS-5)."""
    return config.runaway_window_ms // 2


def runaway_seen(
    measured_kmh: float, accel_kmh_s: float, allowed_kmh: float, config: SafetyConfig
) -> bool:
    """A runaway: above the allowed speed (limit + margin) and still accelerating faster than
    ``runaway_accel_kmh_s``, which no command asks for (SR-PLAUS-5)."""
    return measured_kmh > allowed_kmh and accel_kmh_s > config.runaway_accel_kmh_s


def check_overspeed(step: Step) -> None:
    """Measured above max(limit, commanded) + margin for > overspeed_ms: EStop (SR-PLAUS-1)."""
    measured_kmh = step.high_kmh
    state = step.state
    config = step.config
    if measured_kmh is None:
        # Not judged: no usable reading is latched by SR-STALE-1 / SR-CHAN-1 / SR-MON-4.
        step.state = replace(
            step.state,
            overspeed_since_ms=None,
            overspeed_clear_since_ms=None,
            speed_samples=(),
            runaway_suspect=None,
        )
        return
    reference_kmh = max(stage_limit_kmh(stage_config(state, config), config), state.commanded_kmh)
    margin_kmh = max(config.overspeed_abs_kmh, config.overspeed_rel * reference_kmh)
    # The higher of the speed channels goes through the runaway rule (SR-PLAUS-5).
    _check_runaway(step, measured_kmh, reference_kmh, margin_kmh)
    over = measured_kmh > reference_kmh + margin_kmh
    since_ms, clear_ms = held_timer(
        state.overspeed_since_ms, state.overspeed_clear_since_ms, over, step.now_ms
    )
    step.state = replace(step.state, overspeed_since_ms=since_ms, overspeed_clear_since_ms=clear_ms)
    if not over or since_ms is None:
        return
    lasted_ms = step.now_ms - since_ms
    if lasted_ms > config.overspeed_ms:
        latch(
            step,
            FaultCode.OVERSPEED,
            StopKind.EMERGENCY,
            f"Belt measured at {measured_kmh:.2f} km/h{_source(step, measured_kmh)} for "
            f"{lasted_ms} ms, above the allowed {reference_kmh:.2f} km/h + {margin_kmh:.2f} "
            "km/h margin",
        )


def _check_runaway(
    step: Step, measured_kmh: float, reference_kmh: float, margin_kmh: float
) -> None:
    """A runaway above ``reference_kmh + margin_kmh``, confirmed after half a window: EStop
    (SR-PLAUS-5)."""
    state = step.state
    config = step.config
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
    confirm_ms = runaway_confirm_ms(config)
    if (
        suspect is not None
        and step.now_ms - suspect[0] > confirm_ms
        and measured_kmh - suspect[1] >= config.runaway_accel_kmh_s * confirm_ms / 2000.0
    ):
        latch(
            step,
            FaultCode.OVERSPEED,
            StopKind.EMERGENCY,
            f"Belt measured at {measured_kmh:.2f} km/h{_source(step, measured_kmh)}, up "
            f"{measured_kmh - suspect[1]:.2f} km/h in {step.now_ms - suspect[0]} ms and "
            f"accelerating at {accel_kmh_s:.1f} km/h/s, above the allowed {reference_kmh:.2f} "
            f"km/h + {margin_kmh:.2f} km/h margin (no command accelerates faster than "
            f"{config.runaway_accel_kmh_s:.1f} km/h/s): runaway",
        )


def check_moving_at_rest(step: Step) -> None:
    """Belt moving while it should stand still for > moving_at_rest_ms: EStop (SR-PLAUS-3)."""
    measured_kmh = step.high_kmh
    state = step.state
    config = step.config
    should_rest = state.mode is Mode.IDLE or (
        state.mode is Mode.FAULTED and state.fault_rest_reached
    )
    if measured_kmh is None or not should_rest:
        # Not judged: no usable reading is latched by SR-STALE-1 / SR-CHAN-1 / SR-MON-4, and a
        # belt that may move starts a fresh timer when it must rest again.
        step.state = replace(
            step.state, moving_at_rest_since_ms=None, moving_at_rest_clear_since_ms=None
        )
        return
    moving = measured_kmh > config.standstill_kmh
    since_ms, clear_ms = held_timer(
        state.moving_at_rest_since_ms, state.moving_at_rest_clear_since_ms, moving, step.now_ms
    )
    step.state = replace(
        step.state, moving_at_rest_since_ms=since_ms, moving_at_rest_clear_since_ms=clear_ms
    )
    if not moving or since_ms is None:
        return
    lasted_ms = step.now_ms - since_ms
    if lasted_ms > config.moving_at_rest_ms:
        # Not at rest after all: a latched emergency goes back to sending EStop.
        step.state = replace(step.state, fault_rest_reached=False)
        latch(
            step,
            FaultCode.MOVING_AT_REST,
            StopKind.EMERGENCY,
            f"Belt measured moving at {measured_kmh:.2f} km/h{_source(step, measured_kmh)} "
            f"for {lasted_ms} ms while it should stand still ({state.mode.value})",
        )


def check_following(step: Step) -> None:
    """Belt not following the commanded ramp for > follow_ms: stop and latch (SR-PLAUS-2)."""
    fresh = step.fresh
    state = step.state
    config = step.config
    fault = state.fault
    watched = state.mode in (Mode.RUNNING, Mode.STOPPING) or (
        fault is not None and fault.stop is StopKind.CONTROLLED and not state.fault_rest_reached
    )
    if fresh is None or not watched:
        # Not judged: an unusable status is latched by SR-STALE-1 (stale) or as not following
        # (an invalid reading); a belt no longer watched starts a fresh timer when it is again.
        step.state = replace(
            step.state, follow_since_ms=None, follow_clear_since_ms=None, follow_too_fast=False
        )
        return
    expected_kmh = state.commanded_kmh
    if state.mode is not Mode.RUNNING and expected_kmh == 0.0:
        # The stop ramp is over: the belt must now come to rest, not just stay near it.
        tolerance_kmh = config.standstill_kmh
    else:
        lag_kmh = ramp_rate_kmh_s(state, config) * config.follow_lag_ms / 1000.0
        tolerance_kmh = max(config.follow_tol_kmh, config.follow_rel * expected_kmh) + lag_kmh
    # Too fast is judged on the higher channel, too slow on the lower (SR-CHAN-3).
    high_kmh = fresh.measured_kmh if step.high_kmh is None else step.high_kmh
    low_kmh = fresh.measured_kmh if step.low_kmh is None else step.low_kmh
    too_fast = high_kmh - expected_kmh > tolerance_kmh
    # A belt at rest while clearly commanded to move is stalled, even below the tolerance.
    stalled = expected_kmh > 2.0 * config.standstill_kmh and low_kmh <= config.standstill_kmh
    too_slow = state.mode is Mode.RUNNING and (expected_kmh - low_kmh > tolerance_kmh or stalled)
    since_ms = _follow_timer(step, too_fast, too_slow)
    if since_ms is None:
        return
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
    latch(
        step,
        FaultCode.NOT_FOLLOWING,
        StopKind.EMERGENCY if too_fast else StopKind.CONTROLLED,
        seen,
    )


def _follow_timer(step: Step, too_fast: bool, too_slow: bool) -> int | None:
    """Advance the not-following timer (``tick.held_timer``); its start on a tick not
    following, None on a tick that follows (SR-PLAUS-2)."""
    state = step.state
    bad = too_fast or too_slow
    since_ms, clear_ms = held_timer(
        state.follow_since_ms, state.follow_clear_since_ms, bad, step.now_ms
    )
    if not bad and state.mode is not Mode.RUNNING and not state.follow_too_fast:
        # Too slow is judged only while RUNNING: a timer started by a belt too slow does not
        # carry into a stop, where only too fast counts; it restarts at once.
        since_ms = clear_ms = None
    step.state = replace(
        step.state,
        follow_since_ms=since_ms,
        follow_clear_since_ms=clear_ms,
        follow_too_fast=too_fast if bad else state.follow_too_fast and since_ms is not None,
    )
    return since_ms if bad else None


def _source(step: Step, speed_kmh: float) -> str:
    """`` (Pi belt sensor)`` when ``speed_kmh`` is the second channel's reading and not the
    firmware's; empty otherwise, so single-channel messages read as before."""
    fresh = step.fresh
    if fresh is None or fresh.measured_kmh != speed_kmh:
        return " (Pi belt sensor)"
    return ""
