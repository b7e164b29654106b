"""What a scenario run recorded and how it is judged: the timeline, the stops found and measured,
the expectations checked, and the report.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final, TypeVar

from controller.rules.model import StageConfig

if TYPE_CHECKING:
    pass
from controller.tools.scenario_spec import _AT_KINDS, ExpectSpec, Scenario, StepSpec

_T = TypeVar("_T")


REST_KMH: Final = 0.1
"""True belt speed at or below which a stop is complete (km/h)."""


_CLOCK_SLACK_S: Final = 0.002
"""Tick times are whole milliseconds; a step carried out within this of a tick counts as
before it."""


STOP_TRIGGER_WINDOW_S: Final = 10.0
"""A stop is attributed to the latest provoking step at most this long before the decision."""


@dataclass(frozen=True)
class TimelineRow:
    """One control tick. Speeds in km/h; ``belt_kmh`` is the simulator's true speed."""

    t_s: float
    belt_kmh: float | None
    measured_kmh: float | None
    commanded_kmh: float
    target_kmh: float
    stage: int
    state: str
    grip: str
    safety_key: bool
    estop: bool
    fault: str | None
    motion: str
    events: tuple[tuple[str, str], ...]  # (kind, message)

    def as_json(self) -> dict[str, object]:
        def rounded(value: float | None) -> float | None:
            return None if value is None else round(value, 4)

        return {
            "t_s": round(self.t_s, 4),
            "belt_kmh": rounded(self.belt_kmh),
            "measured_kmh": rounded(self.measured_kmh),
            "commanded_kmh": rounded(self.commanded_kmh),
            "target_kmh": rounded(self.target_kmh),
            "stage": self.stage,
            "state": self.state,
            "grip": self.grip,
            "safety_key": self.safety_key,
            "estop": self.estop,
            "fault": self.fault,
            "motion": self.motion,
            "events": [{"kind": kind, "message": message} for kind, message in self.events],
        }


@dataclass(frozen=True)
class StepRecord:
    """A step as carried out: when (s from the scenario start) and whether it worked."""

    at_s: float
    done_s: float
    action: str
    text: str
    error: str | None = None
    provoking: bool = True  # can make the belt stop (a grip release, STOP, a fault, ...)


@dataclass(frozen=True)
class StopRecord:
    """One stop of the belt, from the provoking step to the belt at rest."""

    cause: str  # the transition reason: grip_lost, estop, stop_button, remote_stop, ...
    decision_s: float  # when the controller decided to stop
    trigger_s: float  # the provoking step (or the decision when there is none)
    trigger: str  # text of the provoking step, or "controller"
    speed_at_trigger_kmh: float
    peak_kmh: float  # highest true speed from the trigger to rest
    rest_s: float | None  # true speed <= REST_KMH; None: not at rest by the end of the run
    distance_m: float  # belt travel from the trigger to rest (or to the end of the run)

    @property
    def stop_time_s(self) -> float | None:
        return None if self.rest_s is None else self.rest_s - self.trigger_s

    def describe(self) -> str:
        head = (
            f"{self.cause}: trigger '{self.trigger}' at {self.trigger_s:.2f} s "
            f"({self.speed_at_trigger_kmh:.2f} km/h)"
        )
        if self.decision_s > self.trigger_s + 0.0005:
            head += (
                f", controller stopped at {self.decision_s:.2f} s "
                f"(+{self.decision_s - self.trigger_s:.2f} s)"
            )
        if self.rest_s is None:
            return head + f"; NOT at rest by the end of the run ({self.distance_m:.2f} m so far)"
        peak = (
            f", peak {self.peak_kmh:.2f} km/h"
            if self.peak_kmh > self.speed_at_trigger_kmh + 0.05
            else ""
        )
        return (
            f"{head}; at rest at {self.rest_s:.2f} s: stop time {self.stop_time_s:.2f} s, "
            f"distance {self.distance_m:.2f} m{peak}"
        )


@dataclass(frozen=True)
class ExpectationResult:
    index: int
    text: str  # what was expected, in words
    passed: bool
    observed: str


@dataclass(frozen=True)
class ScenarioResult:
    """Everything a run produced. ``passed`` is True when every expectation held."""

    scenario: Scenario
    config_source: str
    stage: int
    rows: tuple[TimelineRow, ...]
    steps: tuple[StepRecord, ...]
    stops: tuple[StopRecord, ...]
    expectations: tuple[ExpectationResult, ...]
    errors: tuple[str, ...] = ()
    service_exit_code: int = 0
    wall_time_s: float = 0.0
    loop_stats: Mapping[str, object] = field(default_factory=dict)
    stages: tuple[StageConfig, ...] = ()  # the config's stage table (for the plot)
    machine_max_kmh: float = math.inf

    @property
    def passed(self) -> bool:
        return not self.errors and all(e.passed for e in self.expectations)

    @property
    def failed_count(self) -> int:
        return sum(1 for e in self.expectations if not e.passed)

    def max_belt_kmh(self, from_s: float = 0.0, to_s: float = math.inf) -> float:
        speeds = [
            r.belt_kmh for r in self.rows if from_s <= r.t_s <= to_s and r.belt_kmh is not None
        ]
        return max(speeds, default=0.0)


GONE_AFTER_S: Final = 0.25
"""An ``at`` expectation whose last tick is older than this (12 control periods) fails: the
service was gone, or stalled, at that time."""


def _row_at(rows: Sequence[TimelineRow], t_s: float) -> TimelineRow | None:
    """The last row at or before ``t_s`` (the first row if there is none before)."""
    found: TimelineRow | None = None
    for row in rows:
        if row.t_s <= t_s + 1e-9:
            found = row
        else:
            break
    if found is None and rows:
        return rows[0]
    return found


def _integrate_m(rows: Sequence[TimelineRow]) -> float:
    """Belt travel over consecutive rows (trapezoids of the true speed), metres."""
    distance = 0.0
    for before, after in itertools.pairwise(rows):
        if before.belt_kmh is None or after.belt_kmh is None:
            continue
        dt = after.t_s - before.t_s
        distance += (before.belt_kmh + after.belt_kmh) / 2.0 / 3.6 * dt
    return distance


def measure_stop(
    rows: Sequence[TimelineRow], trigger_s: float, decision_s: float | None = None
) -> tuple[float | None, float, float, float]:
    """From ``trigger_s``: (rest time or None, distance m, speed at trigger, peak speed).

    The rest time is the first tick at or below :data:`REST_KMH` after the belt last moved
    before ``decision_s`` (the controller's stop decision): a belt that was still at rest
    when the step came, and started moving before the stop, is measured to its final rest.
    """
    after = [r for r in rows if r.t_s >= trigger_s - 1e-9 and r.belt_kmh is not None]
    at_trigger = _row_at(rows, trigger_s)
    speed0 = at_trigger.belt_kmh if at_trigger is not None and at_trigger.belt_kmh else 0.0
    start = 0
    if decision_s is not None:
        for index, row in enumerate(after):
            if row.t_s > decision_s + 1e-9:
                break
            if row.belt_kmh is not None and row.belt_kmh > REST_KMH:
                start = index
    rest_index: int | None = None
    for index in range(start, len(after)):
        belt = after[index].belt_kmh
        if belt is not None and belt <= REST_KMH:
            rest_index = index
            break
    moving = after if rest_index is None else after[: rest_index + 1]
    peak = max([speed0, *(r.belt_kmh or 0.0 for r in moving)])
    distance = _integrate_m(moving)
    if moving and at_trigger is not None and moving[0].t_s > trigger_s:
        distance += speed0 / 3.6 * (moving[0].t_s - trigger_s)
    rest_s = after[rest_index].t_s if rest_index is not None else None
    return rest_s, distance, speed0, peak


def _provokes_stop(step: StepSpec) -> bool:
    """Whether this step can make the controller (or the firmware) stop the belt."""
    if step.grip is not None:
        return step.grip != "both"
    if step.press is not None:
        return step.press == "stop"
    if step.target_kmh is not None:
        return step.target_kmh <= REST_KMH
    if step.safety_key is not None:
        return step.safety_key == "removed"
    if step.estop is not None:
        return step.estop == "pressed"
    if step.console_kmh is not None or step.hang_ms is not None:
        return True  # speeding past the stage limit; a hung controller
    return step.sim_fault is not None or step.mqtt is not None


def find_stops(rows: Sequence[TimelineRow], steps: Sequence[StepRecord]) -> tuple[StopRecord, ...]:
    """Every stop: a transition out of RUNNING, measured from its provoking step to rest."""
    stops: list[StopRecord] = []
    for row in rows:
        for kind, message in row.events:
            if kind != "transition" or not message.startswith("running -> "):
                continue
            cause = message.split("(", 1)[1].rstrip(")") if "(" in message else message
            provoking = [
                s
                for s in steps
                if s.provoking
                and s.done_s <= row.t_s + _CLOCK_SLACK_S
                and row.t_s - s.done_s <= STOP_TRIGGER_WINDOW_S
            ]
            if provoking:
                trigger_s, trigger = provoking[-1].done_s, provoking[-1].text
            else:
                trigger_s, trigger = row.t_s, "controller"
            rest_s, distance, speed0, peak = measure_stop(rows, trigger_s, row.t_s)
            stops.append(
                StopRecord(
                    cause=cause,
                    decision_s=row.t_s,
                    trigger_s=trigger_s,
                    trigger=trigger,
                    speed_at_trigger_kmh=speed0,
                    peak_kmh=peak,
                    rest_s=rest_s,
                    distance_m=distance,
                )
            )
    return tuple(stops)


def _events_in(
    rows: Sequence[TimelineRow], kind: str, from_s: float, to_s: float, contains: str | None
) -> list[tuple[float, str]]:
    found: list[tuple[float, str]] = []
    for row in rows:
        if row.t_s < from_s - 1e-9 or row.t_s > to_s + 1e-9:
            continue
        for event_kind, message in row.events:
            if event_kind == kind and (contains is None or contains in message):
                found.append((row.t_s, message))
    return found


def _speed(value: float | None) -> str:
    return "no reading" if value is None else f"{value:.2f} km/h"


def _describe_expectation(e: ExpectSpec) -> str:
    kind = e.kind
    if kind == "stop_within_s":
        after = f"event {e.after_event}" if e.after_event is not None else f"{e.after_s:g} s"
        text = f"belt at rest within {e.stop_within_s:g} s after {after}"
        if e.max_distance_m is not None:
            text += f", within {e.max_distance_m:g} m"
        return text
    value = getattr(e, kind)
    if kind in _AT_KINDS:
        return f"at {e.at_s:g} s {kind} {value}"
    text = f"{e.from_s:g}-{e.to_s:g} s {kind} {value}"
    if e.message_contains is not None:
        text += f" (message contains {e.message_contains!r})"
    return text


def _req(value: _T | None, name: str) -> _T:
    """``value``, which validation guarantees is set for this kind of expectation."""
    if value is None:
        raise ValueError(f"expectation without {name}")  # prevented by ExpectSpec._shape
    return value


def evaluate(
    index: int,
    e: ExpectSpec,
    rows: Sequence[TimelineRow],
    all_rows: Sequence[TimelineRow] | None = None,
) -> ExpectationResult:
    """Check one expectation against the timeline (``all_rows`` includes the shutdown)."""
    text = _describe_expectation(e)
    if not rows:
        return ExpectationResult(index, text, False, "no timeline rows were recorded")
    if e.kind in _AT_KINDS:
        at_s = _req(e.at_s, "at_s")
        row = _req(_row_at(rows, at_s), "row")
        if row.t_s < at_s - GONE_AFTER_S:
            # No tick near that time: the service was gone (or stalled). The last row says
            # nothing about the time asked for, so this fails instead of passing on stale data.
            return ExpectationResult(
                index,
                text,
                False,
                f"no control tick at {at_s:g} s: the service was gone (last tick at "
                f"{row.t_s:.2f} s)",
            )
        return _evaluate_at(index, text, e, row)
    if e.belt_kmh_never_above is not None:
        from_s, to_s = _req(e.from_s, "from_s"), _req(e.to_s, "to_s")
        speeds = [
            (r.belt_kmh, r.t_s)
            for r in rows
            if from_s - 1e-9 <= r.t_s <= to_s + 1e-9 and r.belt_kmh is not None
        ]
        if not speeds:
            return ExpectationResult(index, text, False, "no belt readings in that span")
        peak, peak_t = max(speeds)
        return ExpectationResult(
            index, text, peak <= e.belt_kmh_never_above, f"peak {peak:.2f} km/h at {peak_t:.2f} s"
        )
    if e.event is not None or e.no_event is not None:
        from_s, to_s = _req(e.from_s, "from_s"), _req(e.to_s, "to_s")
        wanted = e.event if e.event is not None else _req(e.no_event, "no_event")
        found = _events_in(rows, wanted, from_s, to_s, e.message_contains)
        if e.event is not None:
            if found:
                t_s, message = found[0]
                return ExpectationResult(index, text, True, f"at {t_s:.2f} s: {message}")
            seen = sorted({k for r in rows if from_s <= r.t_s <= to_s for k, _m in r.events})
            return ExpectationResult(
                index, text, False, "not seen; events in that span: " + (", ".join(seen) or "none")
            )
        if found:
            t_s, message = found[0]
            return ExpectationResult(index, text, False, f"seen at {t_s:.2f} s: {message}")
        return ExpectationResult(index, text, True, "not seen")
    return _evaluate_stop(index, text, e, rows, all_rows if all_rows is not None else rows)


def _evaluate_at(index: int, text: str, e: ExpectSpec, row: TimelineRow) -> ExpectationResult:
    when = f"at {row.t_s:.2f} s"
    belt = f"belt {_speed(row.belt_kmh)} {when}"
    if e.belt_kmh_at_most is not None:
        ok = row.belt_kmh is not None and row.belt_kmh <= e.belt_kmh_at_most
        return ExpectationResult(index, text, ok, belt)
    if e.belt_kmh_at_least is not None:
        ok = row.belt_kmh is not None and row.belt_kmh >= e.belt_kmh_at_least
        return ExpectationResult(index, text, ok, belt)
    if e.target_kmh_at_most is not None:
        ok = row.target_kmh <= e.target_kmh_at_most + 1e-9
        return ExpectationResult(index, text, ok, f"target {row.target_kmh:.2f} km/h {when}")
    if e.state is not None:
        return ExpectationResult(index, text, row.state == e.state, f"{row.state} {when}")
    if e.stage is not None:
        return ExpectationResult(index, text, row.stage == e.stage, f"stage {row.stage} {when}")
    wanted = None if e.fault == "none" else e.fault
    return ExpectationResult(
        index, text, row.fault == wanted, f"fault {row.fault or 'none'} {when}"
    )


def _evaluate_stop(
    index: int,
    text: str,
    e: ExpectSpec,
    rows: Sequence[TimelineRow],
    all_rows: Sequence[TimelineRow],
) -> ExpectationResult:
    within_s = _req(e.stop_within_s, "stop_within_s")
    if e.after_event is not None:
        found = _events_in(rows, e.after_event, e.from_s or 0.0, math.inf, None)
        if not found:
            return ExpectationResult(index, text, False, f"event {e.after_event} never came")
        origin = found[0][0]
    else:
        origin = _req(e.after_s, "after_s")
    rest_s, distance, speed0, _peak = measure_stop(all_rows, origin)
    if rest_s is None:
        return ExpectationResult(
            index, text, False, f"not at rest by the end ({distance:.2f} m from {speed0:.2f} km/h)"
        )
    took = rest_s - origin
    ok = took <= within_s + 1e-9 and (e.max_distance_m is None or distance <= e.max_distance_m)
    return ExpectationResult(
        index,
        text,
        ok,
        f"at rest {took:.2f} s after {origin:.2f} s, {distance:.2f} m from {speed0:.2f} km/h",
    )


def write_timeline(result: ScenarioResult, path: Path) -> None:
    """One JSON object per control tick (fields: :meth:`TimelineRow.as_json`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as stream:
        for row in result.rows:
            stream.write(json.dumps(row.as_json(), separators=(",", ":")) + "\n")


def format_report(result: ScenarioResult) -> str:
    """The human report: steps, stops, expectations, verdict."""
    spec = result.scenario.spec
    lines = [
        f"scenario {result.scenario.source}",
        f"  config {result.config_source or '(given)'}, stage {result.stage}, "
        f"{spec.duration_s:g} s, seed {spec.seed}",
    ]
    if spec.description:
        lines.append(f"  {spec.description.strip().splitlines()[0]}")
    lines.append("steps:")
    for step in result.steps:
        late = step.done_s - step.at_s
        late_text = f" (+{late * 1000:.0f} ms)" if late > 0.005 else ""
        lines.append(
            f"  {step.done_s:7.2f} s  {step.text}{late_text}"
            + (f"  ERROR {step.error}" if step.error else "")
        )
    lines.append("stops:" if result.stops else "stops: none")
    lines.extend(f"  {stop.describe()}" for stop in result.stops)
    lines.append("expectations:" if result.expectations else "expectations: none")
    for e in result.expectations:
        lines.append(f"  {'PASS' if e.passed else 'FAIL'}  {e.text}: {e.observed}")
    for error in result.errors:
        lines.append(f"  ERROR {error}")
    total = len(result.expectations)
    if result.passed:
        verdict = f"PASS ({total}/{total} expectations held)"
    else:
        verdict = f"FAIL ({result.failed_count} of {total} expectations failed"
        verdict += f", {len(result.errors)} error(s))" if result.errors else ")"
    lines.append(f"result: {verdict}")
    return "\n".join(lines)
