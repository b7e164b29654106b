"""Shared pieces of the fault-matrix rows: the rig's settings and the checks on the belt.

Numbers come from config/demo.yaml (the rows use it, with stage 1 accelerating at the
firmware's 1.0 km/h/s so that a row reaches 2.0 km/h in 2 s instead of 10 s; see
bench.reaction.bench_stage1_edit).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.reaction import bench_stage1_edit
from bench.rig import (
    NS_PER_MS,
    STANDSTILL_KMH,
    BeltWatch,
    MqttTarget,
    Rig,
    RigError,
    RigOptions,
    WireFrame,
)
from firmware_bridge.sim.firmware import SimConfig
from firmware_bridge.wire.messages import EStop, SetSpeed, Stop

__all__ = [
    "BELT_LAG_ALLOWANCE_MS",
    "FW_DECEL_KMH_S",
    "LEASE_MS",
    "STAGE1_MAX_KMH",
    "StopMeasure",
    "fault_code",
    "fault_options",
    "hold_and_watch",
    "measure_stop",
    "motion_frames",
    "stop_budget_ms",
    "stop_frames",
]

LEASE_MS = 300  # firmware.lease_ms
FW_DECEL_KMH_S = 3.6  # firmware.max_decel_kmh_s: the firmware's own stop ramp
STAGE1_MAX_KMH = 2.0
# The belt follows the motor through a 150 ms time constant, and the firmware and the rig run
# on a loaded 2-core CI machine: allowance on top of lease + ramp for the belt to read rest.
BELT_LAG_ALLOWANCE_MS = 600


def fault_options(
    *,
    mqtt: MqttTarget | None = None,
    training: bool = False,
    sim_config: SimConfig | None = None,
    prepare: Callable[[Path], None] | None = None,
    seed: int = 1,
) -> RigOptions:
    """RigOptions for a row: config/demo.yaml with stage 1 accelerating at 1.0 km/h/s."""
    return RigOptions(
        mqtt=mqtt,
        training=training,
        sim_config=sim_config,
        prepare=prepare,
        seed=seed,
        edit=bench_stage1_edit,
    )


def stop_budget_ms(speed_kmh: float) -> float:
    """Lease + the firmware's ramp from ``speed_kmh`` + the belt-lag allowance (ms)."""
    return LEASE_MS + speed_kmh / FW_DECEL_KMH_S * 1000.0 + BELT_LAG_ALLOWANCE_MS


@dataclass(frozen=True)
class StopMeasure:
    """How a belt came to rest after a fault at ``t0_ns``."""

    speed_at_fault_kmh: float
    stop_ms: float  # fault -> belt at or below standstill (true speed)
    distance_m: float  # belt travel from the fault to rest
    peak_kmh: float  # highest true speed after the fault


async def measure_stop(
    rig: Rig, watch: BeltWatch, t0_ns: int, speed_at_fault_kmh: float, *, timeout_s: float = 10
) -> StopMeasure:
    """Wait until the belt is at rest and measure how long and how far it took."""
    await rig.wait_belt(lambda v: v <= STANDSTILL_KMH, timeout_s=timeout_s, what="belt at rest")
    rest_ns = watch.rest_after(t0_ns)
    if rest_ns is None:
        rest_ns = time.monotonic_ns()
    return StopMeasure(
        speed_at_fault_kmh=round(speed_at_fault_kmh, 2),
        stop_ms=round((rest_ns - t0_ns) / NS_PER_MS, 1),
        distance_m=round(watch.distance_m(), 3),
        peak_kmh=round(watch.peak_kmh(t0_ns), 2),
    )


async def hold_and_watch(rig: Rig, seconds: float) -> float:
    """Watch the belt for ``seconds``; the highest true speed seen (km/h)."""
    watch = rig.watch_belt()
    try:
        await asyncio.sleep(seconds)  # an observation window, not a wait for a condition
    finally:
        await watch.stop()
    return watch.peak_kmh()


def motion_frames(rig: Rig, after_ns: int) -> list[WireFrame]:
    """SET_SPEED frames above standstill sent by the service at or after ``after_ns``."""
    return [
        f
        for f in rig.wire.since(after_ns)
        if isinstance(f.message, SetSpeed) and f.message.speed_kmh > STANDSTILL_KMH
    ]


def stop_frames(rig: Rig, after_ns: int) -> list[WireFrame]:
    """STOP and ESTOP frames sent at or after ``after_ns``."""
    return [f for f in rig.wire.since(after_ns) if isinstance(f.message, Stop | EStop)]


async def fault_code(rig: Rig, *, timeout_s: float = 5.0) -> str:
    """The controller's latched fault code, waiting for one to be latched."""
    state = await rig.wait_status(
        lambda s: s["fault"] is not None, timeout_s=timeout_s, what="a latched fault"
    )
    code = state["fault"]["code"]
    if not isinstance(code, str):
        raise RigError(f"fault without a code: {state['fault']}")
    return code
