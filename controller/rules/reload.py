"""Config reload while the belt moves: tighter limits at once, looser ones only at rest.

Pure. :func:`merge_for_running` returns, field by field, the *stricter* of the old and the new
safety config, so a SIGHUP can only make a running session safer. The service applies the
full new config once the belt is at rest.
"""

from __future__ import annotations

import dataclasses

from controller.rules.model import GripLossAction, SafetyConfig, StageConfig

# Strictness order of grip-loss actions: a later entry is stricter.
_GRIP_STRICTNESS = (
    GripLossAction.NONE,
    GripLossAction.WARN,
    GripLossAction.SLOW,
    GripLossAction.STOP_LATCH,
)


def _stricter_action(a: GripLossAction, b: GripLossAction) -> GripLossAction:
    return a if _GRIP_STRICTNESS.index(a) >= _GRIP_STRICTNESS.index(b) else b


def _merge_stage(old: StageConfig, new: StageConfig) -> StageConfig:
    return dataclasses.replace(
        new,
        max_kmh=min(old.max_kmh, new.max_kmh),
        start_kmh=min(old.start_kmh, new.start_kmh, old.max_kmh, new.max_kmh),
        accel_kmh_s=min(old.accel_kmh_s, new.accel_kmh_s),
        # A gentler deceleration is not "safer" on a belt someone walks on: keep the newer
        # value only if it lies within both configs' validated ranges, i.e. take the old one.
        decel_kmh_s=old.decel_kmh_s,
        grip_hands_required=max(old.grip_hands_required, new.grip_hands_required),
        on_grip_loss=_stricter_action(old.on_grip_loss, new.on_grip_loss),
        grip_grace_ms=min(old.grip_grace_ms, new.grip_grace_ms),
        grip_slow_kmh=min(old.grip_slow_kmh, new.grip_slow_kmh),
        clip_required=old.clip_required or new.clip_required,
    )


def merge_for_running(old: SafetyConfig, new: SafetyConfig) -> SafetyConfig:
    """The stricter of ``old`` and ``new``, field by field.

    If the number of stages changed, the old stage table is kept until the belt is at rest.
    """
    if len(old.stages) == len(new.stages):
        stages = tuple(_merge_stage(o, n) for o, n in zip(old.stages, new.stages, strict=True))
    else:
        stages = old.stages
    return dataclasses.replace(
        old,
        stages=stages,
        machine_max_kmh=min(old.machine_max_kmh, new.machine_max_kmh),
        lease_ms=min(old.lease_ms, new.lease_ms),
        stale_ms=min(old.stale_ms, new.stale_ms),
        standstill_kmh=min(old.standstill_kmh, new.standstill_kmh),
        speed_step_kmh=min(old.speed_step_kmh, new.speed_step_kmh),
        overspeed_abs_kmh=min(old.overspeed_abs_kmh, new.overspeed_abs_kmh),
        overspeed_rel=min(old.overspeed_rel, new.overspeed_rel),
        overspeed_ms=min(old.overspeed_ms, new.overspeed_ms),
        follow_tol_kmh=min(old.follow_tol_kmh, new.follow_tol_kmh),
        follow_rel=min(old.follow_rel, new.follow_rel),
        follow_ms=min(old.follow_ms, new.follow_ms),
        moving_at_rest_ms=min(old.moving_at_rest_ms, new.moving_at_rest_ms),
        grip_chatter_edges=min(old.grip_chatter_edges, new.grip_chatter_edges),
        grip_chatter_window_ms=max(old.grip_chatter_window_ms, new.grip_chatter_window_ms),
        grip_stuck_window_ms=min(old.grip_stuck_window_ms, new.grip_stuck_window_ms),
        max_grip_grace_ms=min(old.max_grip_grace_ms, new.max_grip_grace_ms),
        link_settle_ms=max(old.link_settle_ms, new.link_settle_ms),
        link_loss_max=min(old.link_loss_max, new.link_loss_max),
        link_window_min_frames=min(old.link_window_min_frames, new.link_window_min_frames),
        grip_regrip_ms=max(old.grip_regrip_ms, new.grip_regrip_ms),
        runaway_accel_kmh_s=min(old.runaway_accel_kmh_s, new.runaway_accel_kmh_s),
    )
