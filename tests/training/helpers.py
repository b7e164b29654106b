"""Shared builders for the training tests: the default stage table, core states, a fake clock."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from controller.rules.model import (
    CoreState,
    Event,
    Fault,
    FaultCode,
    GripLossAction,
    Mode,
    StageConfig,
    StopKind,
)
from controller.training.program import TrainingProgram, TrainingTick
from controller.training.sessions import EndReason, SessionRecord, SessionStatus

STAGES = (
    StageConfig(1, "assisted backward walk", 2.0, 0.5, 0.2, 3.6, 1, GripLossAction.STOP_LATCH, 300),
    StageConfig(
        2, "supported backward walk", 3.5, 1.0, 0.3, 3.6, 1, GripLossAction.STOP_LATCH, 800
    ),
    StageConfig(3, "fast backward walk", 5.5, 1.5, 0.4, 3.6, 0, GripLossAction.WARN, 0),
    StageConfig(4, "backward jog", 8.0, 2.0, 0.5, 3.6, 0, GripLossAction.NONE, 0),
)

T0 = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)


def counter_ids(prefix: str = "id") -> Callable[[], str]:
    numbers = itertools.count(1)
    return lambda: f"{prefix}{next(numbers):04d}"


def core(
    mode: Mode = Mode.RUNNING,
    *,
    stage: int = 1,
    kmh: float = 2.0,
    fault: FaultCode | None = None,
    stop_reason: str | None = None,
) -> CoreState:
    return CoreState(
        mode=mode,
        stage=stage,
        target_kmh=kmh,
        commanded_kmh=kmh,
        fault=None if fault is None else Fault(fault, "test fault", 0, StopKind.CONTROLLED),
        stop_reason=stop_reason,
    )


IDLE = core(Mode.IDLE, kmh=0.0)


@dataclass
class Clock:
    """Explicit time: monotonic milliseconds and the matching UTC."""

    now_ms: int = 1_000
    start_utc: datetime = T0

    @property
    def utc(self) -> datetime:
        return self.start_utc + timedelta(milliseconds=self.now_ms)


@dataclass
class Driver:
    """Feeds a TrainingProgram ticks at ``tick_ms`` and collects what comes back."""

    program: TrainingProgram
    clock: Clock = field(default_factory=Clock)
    tick_ms: int = 100
    ticks: list[TrainingTick] = field(default_factory=list)

    def tick(
        self,
        state: CoreState,
        measured_kmh: float | None,
        *,
        events: tuple[Event, ...] = (),
        trainer_action: bool = False,
        belt_at_rest: bool | None = None,
    ) -> TrainingTick:
        """``belt_at_rest`` is the core's verdict; by default that of an ideal belt, which
        stands still exactly when it reads at most the default ``standstill_kmh`` (0.1) in
        IDLE or FAULTED."""
        self.clock.now_ms += self.tick_ms
        if belt_at_rest is None:
            belt_at_rest = (
                state.mode in (Mode.IDLE, Mode.FAULTED)
                and measured_kmh is not None
                and measured_kmh <= 0.1
            )
        result = self.program.on_tick(
            now_ms=self.clock.now_ms,
            utc=self.clock.utc,
            core=state,
            measured_kmh=measured_kmh,
            belt_at_rest=belt_at_rest,
            events=events,
            trainer_action=trainer_action,
        )
        self.ticks.append(result)
        return result

    def run(
        self, seconds: float, state: CoreState, measured_kmh: float | None
    ) -> list[TrainingTick]:
        count = round(seconds * 1000 / self.tick_ms)
        return [self.tick(state, measured_kmh) for _ in range(count)]

    def rest(self, seconds: float) -> list[TrainingTick]:
        return self.run(seconds, IDLE, 0.0)

    def events(self, kind: str) -> list[Event]:
        return [event for result in self.ticks for event in result.events if event.kind == kind]


def record(
    *,
    session_id: str,
    client_id: str | None = "c1",
    start: datetime = T0,
    moving_min: float = 12.0,
    stage: int = 1,
    continuous: dict[float, float] | None = None,
    faults: tuple[str, ...] = (),
    grip_stops: int = 0,
) -> SessionRecord:
    """A finished session as the log holds it; ``continuous`` maps km/h to minutes."""
    moving_s = moving_min * 60
    runs = continuous if continuous is not None else {2.0: moving_min}
    return SessionRecord(
        session_id=session_id,
        treadmill_id="tm1",
        client_id=client_id,
        status=SessionStatus.COMPLETE,
        end_reason=EndReason.REST,
        start_utc=start,
        end_utc=start + timedelta(seconds=moving_s),
        duration_s=moving_s,
        moving_s=moving_s,
        distance_m=moving_s * 2.0 / 3.6,
        max_kmh=2.0,
        stage_cap=stage,
        highest_stage=stage,
        stage_s=((stage, moving_s),),
        continuous_s_at_kmh=tuple(sorted((kmh, minutes * 60) for kmh, minutes in runs.items())),
        grip_losses=grip_stops,
        grip_stops=grip_stops,
        grip_warnings=0,
        faults=faults,
        stop_reasons=(),
    )


def days(n: float) -> timedelta:
    return timedelta(days=n)


async def wait_until(condition: Callable[[], bool], *, timeout_s: float = 5.0) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout_s`` (never a fixed sleep)."""
    import asyncio

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        await asyncio.sleep(0.005)
