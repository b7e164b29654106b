"""``treadmill verify-config``: a commissioning report for a config, measured on the simulator.

For every stage of the config the standard safety situations are run through the real
controller (:mod:`controller.tools.scenario`, the simulated firmware, mock GPIO pins), each
with the belt first brought to the stage maximum. The runs are on a virtual clock
(:mod:`controller.tools.virtual_time`): every tick comes exactly on time, so the machine's
load cannot change a verdict and the same config always gives the same figures.
``--real-time`` runs them in real time on pseudo-terminals instead (an end-to-end check of
the real loop; its figures then depend on how busy the machine is):

* **grip loss**: both hands leave the rails; the stage's grip policy must act (a latched
  controlled stop for ``stop_latch``, slowing for ``slow``, a warning for ``warn``, nothing
  for ``none``);
* **e-stop**: the mushroom stop is pressed (it opens the motor power chain and the console
  input);
* **link loss**: the USB cable to the motor controller is pulled; the firmware's motion lease
  must stop the belt;
* **runaway**: the motor board accelerates on its own (1.0 km/h/s) with the firmware's own
  plausibility checks switched off, so the controller's overspeed check alone must catch it;
* **max speed**: while ramping up, the true belt speed never exceeds the stage maximum.

Stop time and distance are measured on the simulator's *true* belt speed, from the moment of
the event to the belt at rest (<= 0.1 km/h). Each stop must finish within a limit derived
from the config (:func:`~controller.tools.verify_limits.stop_limit_s`), with no speed-up
after the event. The exit status is 0 only if every check holds; 1 if one fails; 78 if the
config itself is invalid. The checks and their limits are in :mod:`controller.tools.verify_limits`,
the report in :mod:`controller.tools.verify_report`.

The same config file used on the machine can be verified: the serial port is replaced by the
simulator and the GPIO pins by mock pins in memory; the file is not changed.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Final, TextIO

from controller.rules.grip import grip_watched
from controller.rules.model import GripLossAction, StageConfig
from controller.tools.scenario import ScenarioRunError, run_scenarios
from controller.tools.scenario_results import REST_KMH, ScenarioResult, StopRecord
from controller.tools.scenario_spec import Scenario, ScenarioSpec
from controller.tools.verify_limits import (
    CHECK_TITLES,
    CHECKS,
    MAX_SPEED_TOLERANCE_KMH,
    RUNAWAY_ACCEL_KMH_S,
    runaway_peak_limit_kmh,
    stop_limit_s,
    trigger_time_s,
)
from controller.tools.verify_report import CheckResult, StageReport, VerifyReport, format_markdown
from controller.tools.virtual_time import VirtualTimeLoop, run_virtual

if TYPE_CHECKING:
    from controller.settings.schema import AppConfig

__all__ = ["verify_config", "verify_main"]

logger = logging.getLogger(__name__)

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_CONFIG: Final = 78


_END_TRIGGER: Final = "end of scenario: shutdown"
_END_CAUSE: Final = "scenario finished"


# --------------------------------------------------------------------------- limits


# --------------------------------------------------------------------------- scenarios


def _scenario(stage: StageConfig, check: str, config: AppConfig) -> Scenario:
    trigger = trigger_time_s(stage)
    limit = stop_limit_s(check, stage, config)
    events: dict[str, dict[str, object]] = {
        "grip": {"grip": "none"},
        "estop": {"estop": "pressed"},
        "link": {"sim_fault": "disconnect"},
        "runaway": {"sim_fault": "runaway", "value": RUNAWAY_ACCEL_KMH_S},
    }
    event = events[check]
    # Key-relay mode: the person starts the belt and holds the + key at the treadmill's own
    # console; a "link loss" is the controller hanging (no relay toggles) for 1 s.
    ramp: list[dict[str, object]] = [{"at_s": 0.3, "target_kmh": stage.max_kmh}]
    if config.drive.mode == "key_relay":
        ramp = [
            {"at_s": 0.6, "console": "start"},
            {"at_s": 0.7, "console_kmh": stage.max_kmh},
        ]
        if check == "link":
            event = {"hang_ms": 1000}
    duration = trigger + (limit if limit is not None else 3.0) + 1.5
    spec = ScenarioSpec.model_validate(
        {
            "description": f"verify-config: {CHECK_TITLES[check]} at stage {stage.number}",
            "stage": stage.number,
            "duration_s": round(duration, 1),
            "simulator": {"self_checks": check != "runaway"},
            "steps": [
                {"at_s": 0.0, "grip": "both"},
                {"at_s": 0.2, "press": "start"},
                *ramp,
                {"at_s": trigger, **event},
            ],
        }
    )
    return Scenario(spec=spec, source=f"stage {stage.number} {check}", base_dir=Path.cwd())


# --------------------------------------------------------------------------- results


def _event_stop(result: ScenarioResult, trigger_s: float) -> StopRecord | None:
    for stop in result.stops:
        if (
            stop.trigger != _END_TRIGGER
            and stop.cause != _END_CAUSE
            and stop.decision_s >= trigger_s - 0.05
        ):
            return stop
    return None


def _early_stop(result: ScenarioResult, trigger_s: float) -> str | None:
    """Why the belt stopped before the event (so the check could not be made), or None."""
    for stop in result.stops:
        if stop.decision_s < trigger_s - 0.05:
            faults = [
                message
                for row in result.rows
                if row.t_s <= stop.decision_s + 0.05
                for kind, message in row.events
                if kind == "fault"
            ]
            detail = f": {faults[0]}" if faults else ""
            return (
                f"the belt stopped before reaching the event ({stop.cause} at "
                f"{stop.decision_s:.2f} s, {stop.speed_at_trigger_kmh:.2f} km/h){detail}"
            )
    return None


def _judge_stop(
    check: str,
    result: ScenarioResult,
    trigger_s: float,
    limit_s: float,
    peak_limit_kmh: float | None,
) -> CheckResult:
    stop = _event_stop(result, trigger_s)
    row = next((r for r in result.rows if r.t_s >= trigger_s), None)
    speed = row.belt_kmh if row is not None else None
    if stop is None:
        return CheckResult(
            check, False, speed, None, None, None, limit_s, None,
            "the controller did not stop the belt",
        )  # fmt: skip
    problems: list[str] = []
    if stop.rest_s is None:
        problems.append(f"belt not at rest (<= {REST_KMH} km/h) by the end of the run")
    elif stop.stop_time_s is not None and stop.stop_time_s > limit_s:
        problems.append(f"stop took {stop.stop_time_s:.2f} s, limit {limit_s:.2f} s")
    allowed_peak = peak_limit_kmh if peak_limit_kmh is not None else stop.speed_at_trigger_kmh + 0.1
    if stop.peak_kmh > allowed_peak:
        problems.append(f"belt reached {stop.peak_kmh:.2f} km/h, limit {allowed_peak:.2f} km/h")
    return CheckResult(
        check=check,
        passed=not problems,
        speed_kmh=stop.speed_at_trigger_kmh,
        cause=stop.cause,
        stop_time_s=stop.stop_time_s,
        stop_distance_m=stop.distance_m,
        limit_s=limit_s,
        peak_kmh=stop.peak_kmh,
        note="; ".join(problems),
    )


def _judge_grip_without_stop(
    stage: StageConfig, result: ScenarioResult, trigger_s: float
) -> CheckResult:
    """Stages whose grip policy is not a stop: the policy must act, and the belt keep going."""
    after = [r for r in result.rows if trigger_s <= r.t_s <= result.scenario.spec.duration_s]
    kinds = {kind for r in after for kind, _m in r.events}
    stop = _event_stop(result, trigger_s)
    speed = after[0].belt_kmh if after else None
    problems: list[str] = []
    if stop is not None:
        problems.append(f"the belt was stopped ({stop.cause})")
    policy = stage.on_grip_loss
    if not grip_watched(stage):
        note = "grip not watched at this stage (configured): belt kept running"
    elif policy is GripLossAction.WARN:
        note = "warning only (configured)"
        if "grip_warning" not in kinds:
            problems.append("no grip_warning event")
    else:  # SLOW
        end = after[-1].belt_kmh if after else None
        note = f"slowed to {end:.2f} km/h (configured {stage.grip_slow_kmh:.2f})" if end else ""
        if end is None or end > stage.grip_slow_kmh + 0.2:
            problems.append(f"did not slow to {stage.grip_slow_kmh:.2f} km/h")
    return CheckResult(
        "grip", not problems, speed, stop.cause if stop else None, None, None, None, None,
        "; ".join([*problems, note] if problems else [note]),
    )  # fmt: skip


def _judge_max_speed(stage: StageConfig, results: Sequence[ScenarioResult]) -> CheckResult:
    trigger = trigger_time_s(stage)
    peak = max((r.max_belt_kmh(0.0, trigger - 0.05) for r in results), default=0.0)
    limit = stage.max_kmh + MAX_SPEED_TOLERANCE_KMH
    ok = peak <= limit
    note = "" if ok else f"belt reached {peak:.2f} km/h, above the stage maximum"
    return CheckResult(
        "max_speed", ok, None, None, None, None, None, peak,
        note or f"{len(results)} ramps to {stage.max_kmh:.1f} km/h",
    )  # fmt: skip


def _judge(
    stage: StageConfig,
    check: str,
    outcome: ScenarioResult | ScenarioRunError,
    config: AppConfig,
) -> CheckResult:
    if isinstance(outcome, ScenarioRunError):
        return CheckResult(check, False, None, None, None, None, None, None, f"not run: {outcome}")
    trigger = trigger_time_s(stage)
    errors = [e for e in outcome.errors if "exited with status" not in e]
    if errors:
        return CheckResult(check, False, None, None, None, None, None, None, "; ".join(errors))
    early = _early_stop(outcome, trigger)
    if early is not None:
        return CheckResult(check, False, None, None, None, None, None, None, early)
    limit = stop_limit_s(check, stage, config)
    if limit is None:
        return _judge_grip_without_stop(stage, outcome, trigger)
    peak_limit = runaway_peak_limit_kmh(stage, config) if check == "runaway" else None
    return _judge_stop(check, outcome, trigger, limit, peak_limit)


async def verify_config(
    config: AppConfig, *, config_path: str = "", jobs: int = 8, stages: Sequence[int] = ()
) -> VerifyReport:
    """Run every check for every stage (or ``stages``), ``jobs`` runs at a time."""
    started = time.monotonic()
    all_stages = config.stage_configs()
    chosen = [s for s in all_stages if not stages or s.number in stages]
    plan = [(stage, check) for stage in chosen for check in CHECKS]
    # Longest runs first, so the slow ramps of the fast stages do not end up last.
    order = sorted(range(len(plan)), key=lambda i: -trigger_time_s(plan[i][0]))
    items = [(_scenario(plan[i][0], plan[i][1], config), config) for i in order]
    outcomes = await run_scenarios(items, jobs=jobs)
    by_plan: dict[tuple[int, str], ScenarioResult | ScenarioRunError] = {}
    for index, outcome in zip(order, outcomes, strict=True):
        stage, check = plan[index]
        by_plan[(stage.number, check)] = outcome
    reports = []
    for stage in chosen:
        results = [
            outcome
            for check in CHECKS
            if isinstance(outcome := by_plan[(stage.number, check)], ScenarioResult)
        ]
        checks = [_judge_max_speed(stage, results)]
        checks.extend(
            _judge(stage, check, by_plan[(stage.number, check)], config) for check in CHECKS
        )
        reports.append(StageReport(stage, tuple(checks)))
    return VerifyReport(
        config_path=config_path,
        stages=tuple(reports),
        wall_time_s=time.monotonic() - started,
        created_utc=datetime.now(UTC),
        virtual_time=isinstance(asyncio.get_running_loop(), VirtualTimeLoop),
    )


# --------------------------------------------------------------------------- report


# --------------------------------------------------------------------------- command line


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="treadmill verify-config",
        description="Measure stop times and distances for a config on the simulated "
        "treadmill (grip loss, e-stop, link loss, runaway, max speed per stage). "
        "Exit 0 only if every check holds.",
    )
    parser.add_argument("path", type=Path, help="the config to verify (it is not changed)")
    parser.add_argument("--report", type=Path, metavar="OUT.md", help="also write the report")
    parser.add_argument("-j", "--jobs", type=int, default=8, help="runs at a time (default 8)")
    parser.add_argument(
        "--stage",
        type=int,
        action="append",
        default=[],
        metavar="N",
        help="verify only this stage (repeatable)",
    )
    parser.add_argument(
        "--real-time",
        action="store_true",
        help="run in real time on pseudo-terminals instead of on a virtual clock (figures "
        "then depend on the machine's load)",
    )
    return parser


def verify_main(argv: list[str], out: TextIO | None = None, err: TextIO | None = None) -> int:
    """``treadmill verify-config``; returns the exit status."""
    from controller.settings.config import ConfigError, load_config  # noqa: PLC0415

    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    args = _parser().parse_args(argv)
    if args.jobs < 1:
        err.write(f"--jobs must be at least 1, got {args.jobs}\n")
        return EXIT_CONFIG
    handler = logging.StreamHandler(err)
    handler.setFormatter(logging.Formatter("%(levelname)-7s %(name)s: %(message)s"))
    logging.getLogger().handlers[:] = [handler]
    logging.getLogger().setLevel(logging.ERROR)
    try:
        config = load_config(args.path)
    except ConfigError as exc:
        for line in exc.lines():
            err.write(line + "\n")
        return EXIT_CONFIG
    unknown = [n for n in args.stage if not 1 <= n <= len(config.stages)]
    if unknown:
        err.write(f"--stage {unknown[0]}: the config has stages 1 to {len(config.stages)}\n")
        return EXIT_CONFIG
    out.write(
        f"verifying {args.path}: {len(args.stage or config.stages) * len(CHECKS)} runs on "
        f"the simulator, {args.jobs} at a time...\n"
    )
    out.flush()
    main = verify_config(config, config_path=str(args.path), jobs=args.jobs, stages=args.stage)
    report = asyncio.run(main) if args.real_time else run_virtual(main)
    text = format_markdown(report, config)
    out.write(text)
    if args.report is not None:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(text, encoding="utf-8")
        out.write(f"report written to {args.report}\n")
    return EXIT_OK if report.passed else EXIT_FAILED
