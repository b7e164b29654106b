"""The checks of ``treadmill verify-config`` and their limits, derived from the config: what
is checked at every stage, when the event comes, and how long the stop may take.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from controller.rules.model import GripLossAction, StageConfig

if TYPE_CHECKING:
    from controller.settings.schema import AppConfig

ALLOWANCE_S: Final = 1.0
"""Reaction allowance added to every stop limit: control ticks, the 50 Hz STATUS, the speed
sensor's pulse period and the belt's lag behind the motor (s)."""


SETTLE_S: Final = 1.5
"""Time at the stage maximum before the event, so the belt has caught up (s)."""


RUNAWAY_ACCEL_KMH_S: Final = 1.0
"""How fast the simulated motor board runs away (km/h/s)."""


MAX_SPEED_TOLERANCE_KMH: Final = 0.05
"""The true belt speed may exceed the stage maximum by this much while ramping (km/h)."""


CHECKS: Final = ("grip", "estop", "link", "runaway")


CHECK_TITLES: Final = {
    "max_speed": "max speed while ramping",
    "grip": "grip loss",
    "estop": "e-stop",
    "link": "link loss (cable pulled; key-relay mode: controller hung 1 s)",
    "runaway": f"runaway motor ({RUNAWAY_ACCEL_KMH_S:g} km/h/s)",
}


def trigger_time_s(stage: StageConfig) -> float:
    """When the event is applied: start at 0.2 s, ramp to the maximum, settle."""
    return round(0.2 + stage.max_kmh / stage.accel_kmh_s + SETTLE_S, 1)


def stop_limit_s(check: str, stage: StageConfig, config: AppConfig) -> float | None:
    """Longest acceptable time from the event to the belt at rest (s); None: no stop expected.

    * grip loss (stop_latch): grace + max / stop ramp + allowance;
    * e-stop: max / stop ramp + allowance (the power cut is faster; the limit assumes only
      the controller's stop);
    * link loss: lease + max / firmware max deceleration + allowance;
    * runaway: overspeed duration + time to climb past the margin + allowance, then the stop
      from the speed reached, at the stop ramp.
    """
    safety = config.safety()
    v = stage.max_kmh
    stop_decel = safety.stop_decel_kmh_s
    if check == "grip":
        if stage.grip_hands_required == 0 or stage.on_grip_loss is not GripLossAction.STOP_LATCH:
            return None
        return stage.grip_grace_ms / 1000 + v / stop_decel + ALLOWANCE_S
    if check == "estop":
        return v / stop_decel + ALLOWANCE_S
    if check == "link":
        relay = safety.key_relay
        if relay is not None:  # key-relay mode: the loop hangs, the relay drops out
            return relay.hold_off_ms / 1000 + v / stop_decel + ALLOWANCE_S
        return safety.lease_ms / 1000 + v / config.firmware.max_decel_kmh_s + ALLOWANCE_S
    if check == "runaway":
        margin = max(safety.overspeed_abs_kmh, safety.overspeed_rel * v)
        detect_s = safety.overspeed_ms / 1000 + margin / RUNAWAY_ACCEL_KMH_S + ALLOWANCE_S
        peak = v + RUNAWAY_ACCEL_KMH_S * detect_s
        return detect_s + peak / stop_decel + ALLOWANCE_S
    raise ValueError(f"unknown check {check!r}")


def runaway_peak_limit_kmh(stage: StageConfig, config: AppConfig) -> float:
    """Highest belt speed acceptable during the runaway check (km/h)."""
    safety = config.safety()
    v = stage.max_kmh
    margin = max(safety.overspeed_abs_kmh, safety.overspeed_rel * v)
    detect_s = safety.overspeed_ms / 1000 + margin / RUNAWAY_ACCEL_KMH_S + ALLOWANCE_S
    return v + RUNAWAY_ACCEL_KMH_S * detect_s
