"""Control-loop timing, CPU and memory of the service during a steady session; start-up time.

**Loop lateness** comes from the service itself: every regular tick records ``monotonic() -
deadline`` in a 0.1 ms histogram (``link.loop`` in its state payload, read over the mock-panel
socket). The rig also times the SET_SPEED frames as the firmware receives them: while running,
one goes out per tick, so their spacing is the loop period seen from the motor controller.

**CPU and memory** come from ``/proc/<pid>/stat`` (utime + stime) and ``/proc/<pid>/status``
(VmHWM, the peak resident set) of the ``treadmill run`` process, over the steady part of the
session (the belt at its target speed).

**Start-up** is the time from spawning ``treadmill run`` to its ``READY=1`` datagram, which the
service sends after the firmware handshake, i.e. when it can control the belt.
"""

from __future__ import annotations

import asyncio
import itertools
import sys
import time
from dataclasses import dataclass
from typing import Any

from bench.rig import NS_PER_MS, NS_PER_S, Rig, RigOptions
from bench.stats import summary
from firmware_bridge.wire.messages import SetSpeed

__all__ = ["LoopRun", "loop_run", "startup_runs"]

PERIOD_MS = 20.0  # 50 Hz, control.rate_hz in config/demo.yaml
STATS_EVERY_S = 5.0


@dataclass
class LoopRun:
    """One steady session: the loop's own figures, the wire's view, CPU and memory."""

    duration_s: float
    loop: dict[str, Any]  # the service's link.loop at the end (cumulative since READY)
    ticks: int  # regular + woken ticks during the window
    missed_ticks: int  # during the window
    wire_interval_ms: dict[str, float | int]  # SET_SPEED spacing at the firmware
    wire_gaps_over_30ms: int
    cpu_s: float
    cpu_pct_of_core: float
    cpu_s_per_min: float
    rss_peak_kb: int
    rss_end_kb: int
    mqtt: dict[str, Any]  # the publisher's counters at the end
    belt_kmh: float


async def loop_run(options: RigOptions, *, duration_s: float, target_kmh: float) -> LoopRun:
    """Run the belt at ``target_kmh`` for ``duration_s`` and measure the service."""
    async with Rig(options) as rig:
        await rig.start_belt(target_kmh, timeout_s=60)
        service = rig.service
        before = await rig.status()
        stats0 = service.proc_stats()
        t0_ns = time.monotonic_ns()
        peak_kb = stats0.hwm_kb
        end = time.monotonic() + duration_s
        last_report = time.monotonic()
        while (left := end - time.monotonic()) > 0:
            await asyncio.sleep(min(STATS_EVERY_S, left))
            peak_kb = max(peak_kb, service.proc_stats().hwm_kb)
            if time.monotonic() - last_report >= 60:
                last_report = time.monotonic()
                sys.stderr.write(f"  loop: {duration_s - max(0.0, left):.0f}/{duration_s:.0f} s\n")
        stats1 = service.proc_stats()
        t1_ns = time.monotonic_ns()
        after = await rig.status()
        window_s = (t1_ns - t0_ns) / NS_PER_S
        frames = [f for f in rig.wire.since(t0_ns) if isinstance(f.message, SetSpeed)]
        intervals = [(b.t_ns - a.t_ns) / NS_PER_MS for a, b in itertools.pairwise(frames)]
        loop0 = before["link"]["loop"]
        loop1 = after["link"]["loop"]
        cpu_s = stats1.cpu_s - stats0.cpu_s
        return LoopRun(
            duration_s=round(window_s, 1),
            loop=loop1,
            ticks=int(loop1["ticks"]) - int(loop0["ticks"]),
            missed_ticks=int(loop1["missed_ticks"]) - int(loop0["missed_ticks"]),
            wire_interval_ms=summary(intervals),
            wire_gaps_over_30ms=sum(1 for i in intervals if i > 1.5 * PERIOD_MS),
            cpu_s=round(cpu_s, 2),
            cpu_pct_of_core=round(100.0 * cpu_s / window_s, 2),
            cpu_s_per_min=round(60.0 * cpu_s / window_s, 2),
            rss_peak_kb=max(peak_kb, stats1.hwm_kb),
            rss_end_kb=stats1.rss_kb,
            mqtt=dict(after["link"].get("mqtt") or {}),
            belt_kmh=round(rig.belt_kmh, 2),
        )


async def startup_runs(options: RigOptions, runs: int) -> list[float]:
    """Milliseconds from spawning ``treadmill run`` to its READY=1, ``runs`` times."""
    times_ms: list[float] = []
    for _ in range(runs):
        async with Rig(options) as rig:
            assert rig.ready_ns is not None
            times_ms.append((rig.ready_ns - rig.service.spawn_ns) / NS_PER_MS)
    return times_ms
