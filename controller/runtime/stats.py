"""What the control loop reports about itself: one record per tick for observers and the loop's
timing statistics.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from controller.rules.model import (
    CoreState,
    Event,
    Inputs,
    MotionCommand,
)

LATENESS_BINS = 500  # histogram of loop lateness, 0.1 ms bins up to 50 ms


@dataclass(frozen=True)
class TickRecord:
    """One control tick, for observers (scenario timeline, demo view, benchmarks)."""

    now_ms: int
    state: CoreState
    inputs: Inputs
    motion: MotionCommand
    events: tuple[Event, ...]
    belt_true_kmh: float | None  # from the simulator when there is one
    session: dict[str, object] | None


@dataclass
class LoopStats:
    """Control-loop timing. Lateness is measured against the absolute deadline."""

    ticks: int = 0
    woken_ticks: int = 0  # ticks between the regular ones: safety edges and core timers
    timer_ticks: int = 0  # of which woken by a timer deadline of the core
    late_ticks: int = 0
    missed_ticks: int = 0
    max_lateness_ms: float = 0.0
    histogram: list[int] = dataclasses.field(default_factory=lambda: [0] * (LATENESS_BINS + 1))

    def record(self, lateness_s: float, late_threshold_s: float) -> None:
        lateness_ms = max(0.0, lateness_s * 1000.0)
        self.max_lateness_ms = max(self.max_lateness_ms, lateness_ms)
        self.histogram[min(LATENESS_BINS, int(lateness_ms * 10))] += 1
        if lateness_s > late_threshold_s:
            self.late_ticks += 1

    def percentile_ms(self, q: float) -> float:
        total = sum(self.histogram)
        if total == 0:
            return 0.0
        rank = q * total
        seen = 0
        for index, count in enumerate(self.histogram):
            seen += count
            if seen >= rank:
                return (index + 1) / 10.0
        return LATENESS_BINS / 10.0

    def as_dict(self) -> dict[str, object]:
        return {
            "ticks": self.ticks,
            "woken_ticks": self.woken_ticks,
            "timer_ticks": self.timer_ticks,
            "late_ticks": self.late_ticks,
            "missed_ticks": self.missed_ticks,
            "lateness_p50_ms": self.percentile_ms(0.50),
            "lateness_p99_ms": self.percentile_ms(0.99),
            "lateness_max_ms": round(self.max_lateness_ms, 3),
        }
