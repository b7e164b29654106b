"""Simulated demo data for ``treadmill history``: a month of realistic sessions for three
clients, written by driving the real :class:`~controller.training.program.TrainingProgram`
with simulated ticks (for the documentation and the tests).

``python -m controller.tools.history --generate-demo DB`` writes it into a new file.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

from controller.rules.model import (
    CoreState,
    Fault,
    FaultCode,
    GripLossAction,
    Mode,
    StageConfig,
    StopKind,
)
from controller.training.config import TrainingConfig
from controller.training.program import TrainingProgram
from controller.training.store import ClientRecord, SessionStore

#: The default stage table (docs/training.md, config/treadmill.yaml).
DEMO_STAGES = (
    StageConfig(1, "assisted backward walk", 2.0, 0.5, 0.2, 3.6, 1, GripLossAction.STOP_LATCH, 300),
    StageConfig(
        2, "supported backward walk", 3.5, 0.5, 0.3, 3.6, 1, GripLossAction.STOP_LATCH, 800
    ),
    StageConfig(3, "fast backward walk", 5.5, 1.0, 0.4, 3.6, 0, GripLossAction.WARN, 0),
    StageConfig(4, "backward jog", 8.0, 1.0, 0.5, 3.6, 0, GripLossAction.NONE, 0),
)


@dataclass(frozen=True)
class _Plan:
    """One simulated session: what the client sets and what happens."""

    start: datetime
    stage: int
    speed_kmh: float
    minutes: float
    grip_stop_at_min: float | None = None
    pause_at_min: float | None = None
    trainer_checks: bool = False  # a trainer tries the unlock after the session


@dataclass
class _Sim:
    program: TrainingProgram
    rng: random.Random
    now_ms: int = 0
    start_utc: datetime = field(default_factory=lambda: datetime(2000, 1, 1, tzinfo=UTC))
    utc: datetime = field(default_factory=lambda: datetime(2000, 1, 1, tzinfo=UTC))

    def tick(self, state: CoreState, measured_kmh: float, *, trainer: bool = False) -> Any:
        self.now_ms += 1000
        self.utc += timedelta(seconds=1)
        return self.program.on_tick(
            now_ms=self.now_ms,
            utc=self.utc,
            core=state,
            measured_kmh=measured_kmh,
            # The simulated belt is ideal: it stands still exactly when it reads 0.
            belt_at_rest=state.mode in (Mode.IDLE, Mode.FAULTED) and measured_kmh == 0.0,
            events=(),
            trainer_action=trainer,
        )


def _walk(sim: _Sim, client_id: str, plan: _Plan) -> None:
    """Simulate one session at 1 s ticks: ramp up, walk, maybe pause or lose grip, stop."""
    sim.now_ms += 3_600_000  # time passes between sessions (no session is open then)
    sim.utc = plan.start
    sim.program.assign_client(client_id, belt_at_rest=True, source="console")
    idle = CoreState(Mode.IDLE, 1, 0.0, 0.0)
    cap = sim.tick(idle, 0.0).stage_cap
    stage = min(plan.stage, cap)
    stage_config = DEMO_STAGES[stage - 1]
    target = min(plan.speed_kmh, stage_config.max_kmh)
    speed = stage_config.start_kmh
    walked_s = 0.0
    paused = False
    faulted = False
    while walked_s < plan.minutes * 60:
        minute = walked_s / 60
        if plan.pause_at_min is not None and not paused and minute >= plan.pause_at_min:
            paused = True
            _stop(sim, stage, speed, Mode.STOPPING, None)
            for _ in range(sim.rng.randint(40, 90)):  # a short rest, under the session rest time
                sim.tick(CoreState(Mode.IDLE, stage, 0.0, 0.0), 0.0)
            speed = stage_config.start_kmh
        if plan.grip_stop_at_min is not None and not faulted and minute >= plan.grip_stop_at_min:
            faulted = True
            _stop(sim, stage, speed, Mode.FAULTED, FaultCode.GRIP_LOST)
            for _ in range(sim.rng.randint(20, 40)):  # the trainer resets at rest
                sim.tick(
                    CoreState(
                        Mode.FAULTED,
                        stage,
                        0.0,
                        0.0,
                        fault=Fault(FaultCode.GRIP_LOST, "grip lost", 0, StopKind.CONTROLLED),
                    ),
                    0.0,
                )
            speed = stage_config.start_kmh
        speed = min(target, speed + stage_config.accel_kmh_s)
        measured = speed * (1 + sim.rng.gauss(0.0, 0.01))
        result = sim.tick(CoreState(Mode.RUNNING, stage, target, speed), measured)
        walked_s += 1
        if result.request_stop is not None:
            break
    _stop(sim, stage, speed, Mode.STOPPING, None, reason="session_complete")
    for _ in range(5):
        sim.tick(CoreState(Mode.IDLE, stage, 0.0, 0.0), 0.0)
    sim.tick(CoreState(Mode.IDLE, stage, 0.0, 0.0), 0.0, trainer=plan.trainer_checks)
    for _ in range(125):  # the session ends after the rest time
        sim.tick(CoreState(Mode.IDLE, stage, 0.0, 0.0), 0.0)


def _stop(
    sim: _Sim,
    stage: int,
    speed: float,
    mode: Mode,
    fault: FaultCode | None,
    *,
    reason: str | None = None,
) -> None:
    latched = None if fault is None else Fault(fault, "demo", 0, StopKind.CONTROLLED)
    while speed > 0:
        speed = max(0.0, speed - 3.6)
        sim.tick(CoreState(mode, stage, 0.0, speed, fault=latched, stop_reason=reason), speed)


def _plans(rng: random.Random, first_day: date, days: int) -> dict[str, list[_Plan]]:
    """Three clients over ``days`` days: steady, irregular, and one already at stage 2."""

    def at(day: date, hour: int) -> datetime:
        return datetime.combine(day, time(hour, rng.randint(0, 50)), tzinfo=UTC)

    plans: dict[str, list[_Plan]] = {"c101": [], "c102": [], "c103": []}
    for offset in range(days):
        day = first_day + timedelta(days=offset)
        weekday = day.weekday()
        # c101: Monday, Wednesday, Friday (and some Saturdays), 12-15 min, getting steadier
        if weekday in (0, 2, 4) or (weekday == 5 and rng.random() < 0.4):
            progress = offset / days
            plans["c101"].append(
                _Plan(
                    start=at(day, 9),
                    stage=2 if progress > 0.55 else 1,
                    speed_kmh=2.0 if progress > 0.2 else 1.8,
                    minutes=rng.uniform(12.0, 16.0),
                    trainer_checks=True,
                )
            )
        # c102: twice a week, sometimes a third time; shorter; one grip-loss stop
        if weekday in (1, 3) or (weekday == 6 and rng.random() < 0.3):
            plans["c102"].append(
                _Plan(
                    start=at(day, 17),
                    stage=1,
                    speed_kmh=rng.choice((1.5, 1.6, 1.8)),
                    minutes=rng.uniform(7.0, 13.0),
                    grip_stop_at_min=6.0 if offset in (8, 9, 10) else None,
                    pause_at_min=4.0 if rng.random() < 0.3 else None,
                )
            )
        # c103: stage 2, four times a week, 10-15 min at 3.0-3.5 km/h; tries stage 3 at
        # 4.0-4.5 km/h in the last week (the cap keeps it at stage 2 until a trainer unlocks 3)
        if weekday in (0, 1, 3, 4) and rng.random() < 0.9:
            last_week = offset >= days - 7
            plans["c103"].append(
                _Plan(
                    start=at(day, 12),
                    stage=3 if last_week else 2,
                    speed_kmh=rng.choice((4.0, 4.5)) if last_week else rng.choice((3.0, 3.5)),
                    minutes=rng.uniform(10.0, 15.5),
                    trainer_checks=True,
                )
            )
    return plans


async def _generate(path: Path, today: date, seed: int, days: int) -> int:
    rng = random.Random(seed)  # noqa: S311 -- demo data, not security
    first_day = today - timedelta(days=days)
    store = SessionStore.open(path)
    store.write(
        clients=[
            ClientRecord("c103", 2, datetime.combine(first_day - timedelta(days=9), time(12), UTC))
        ]
    )
    store.close()
    ids = iter(f"{rng.getrandbits(128):032x}" for _ in iter(int, 1))
    program = TrainingProgram(
        TrainingConfig(),
        DEMO_STAGES,
        treadmill_id="tm-01",
        db_path=path,
        new_id=lambda: next(ids),
    )
    await program.open()
    sim = _Sim(program, rng)
    plans = _plans(rng, first_day, days)
    ordered = sorted(
        ((plan.start, client, plan) for client, items in plans.items() for plan in items),
        key=lambda item: item[0],
    )
    for _, client, plan in ordered:
        _walk(sim, client, plan)
    await program.close()
    return len(ordered)


def generate_demo(path: Path, *, today: date, seed: int = 7, days: int = 28) -> int:
    """Write ``days`` days of sessions before ``today`` for three clients into a NEW log.

    Returns the number of sessions. Refuses an existing file (it never overwrites a log).
    """
    if path.exists():
        raise FileExistsError(f"{path} exists: --generate-demo writes a new file only")
    return asyncio.run(_generate(path, today, seed, days))
