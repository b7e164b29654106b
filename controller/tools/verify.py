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
from the config (:func:`stop_limit_s`), with no speed-up after the event. The exit status is
0 only if every check holds; 1 if one fails; 78 if the config itself is invalid.

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
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Final, TextIO

from controller.rules.grip import grip_watched
from controller.rules.model import GripLossAction, StageConfig
from controller.tools.scenario import ScenarioRunError, run_scenarios
from controller.tools.scenario_results import REST_KMH, ScenarioResult, StopRecord
from controller.tools.scenario_spec import Scenario, ScenarioSpec
from controller.tools.virtual_time import VirtualTimeLoop, run_virtual

if TYPE_CHECKING:
    from controller.settings.schema import AppConfig

__all__ = [
    "ALLOWANCE_S",
    "RUNAWAY_ACCEL_KMH_S",
    "CheckResult",
    "StageReport",
    "VerifyReport",
    "format_markdown",
    "stop_limit_s",
    "verify_config",
    "verify_main",
]

logger = logging.getLogger(__name__)

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_CONFIG: Final = 78

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
_END_TRIGGER: Final = "end of scenario: shutdown"
_END_CAUSE: Final = "scenario finished"


# --------------------------------------------------------------------------- limits


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


@dataclass(frozen=True)
class CheckResult:
    """One line of the report."""

    check: str
    passed: bool
    speed_kmh: float | None  # true belt speed at the event
    cause: str | None  # what the controller called the stop
    stop_time_s: float | None
    stop_distance_m: float | None
    limit_s: float | None
    peak_kmh: float | None
    note: str


@dataclass(frozen=True)
class StageReport:
    stage: StageConfig
    checks: tuple[CheckResult, ...]

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    def worst(self, checks: Sequence[str]) -> tuple[float | None, float | None]:
        """Worst stop time (s) and distance (m) over ``checks``."""
        times = [
            c.stop_time_s for c in self.checks if c.check in checks and c.stop_time_s is not None
        ]
        distances = [
            c.stop_distance_m
            for c in self.checks
            if c.check in checks and c.stop_distance_m is not None
        ]
        return (max(times, default=None), max(distances, default=None))


@dataclass(frozen=True)
class VerifyReport:
    config_path: str
    stages: tuple[StageReport, ...]
    wall_time_s: float
    created_utc: datetime
    virtual_time: bool = False  # run on a virtual clock (deterministic) or in real time

    @property
    def passed(self) -> bool:
        return all(stage.passed for stage in self.stages)

    @property
    def check_count(self) -> int:
        return sum(len(stage.checks) for stage in self.stages)

    @property
    def failed_count(self) -> int:
        return sum(1 for stage in self.stages for check in stage.checks if not check.passed)


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


def _num(value: float | None, unit: str, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f} {unit}"


def _stage_title(stage: StageConfig) -> str:
    if stage.grip_hands_required == 0 and grip_watched(stage):
        grip = f"grip optional, {stage.on_grip_loss.value}, grace {stage.grip_grace_ms} ms"
    elif stage.grip_hands_required == 0:
        grip = "grip not required"
    else:
        grip = (
            f"{stage.grip_hands_required} hand(s), {stage.on_grip_loss.value}, "
            f"grace {stage.grip_grace_ms} ms"
        )
    return (
        f"Stage {stage.number}: {stage.name} (max {stage.max_kmh:.1f} km/h, "
        f"accel {stage.accel_kmh_s:.2f} km/h/s; {grip})"
    )


#: Double faults that only a second, independent speed channel (``belt_sensor``) detects:
#: with one sensor every check reads the same faulty reading (docs/safety.md, SR-CHAN-*).
UNCOVERED_WITHOUT_SECOND_CHANNEL: Final[tuple[str, ...]] = (
    "the motor controller's speed reading freezes, then the motor board runs away: every "
    "check reads the frozen value, nothing trips (belt 9.78 km/h on an 8.0 km/h machine)",
    "the speed reading freezes at walking speed and the belt then slows or stalls under load: "
    "the controller believes the belt still moves",
    "the belt slips on the driven roller, where the motor controller's sensor sits: the "
    "reading follows the command while the belt runs slower and lurches",
    "the speed sensor reads low (a lost magnet, a mis-set distance per pulse) while the motor "
    "board drives faster than commanded: overspeed is judged on a low reading",
)


def channel_coverage(config: AppConfig) -> list[str]:
    """What the config's speed channels cover, as report lines (SR-CHAN-*, SR-MON-*)."""
    sensor = config.belt_sensor
    relay = config.drive.key_relay
    if config.drive.mode == "key_relay" and relay is not None and sensor is not None:
        return [
            "## Drive mode: key relay",
            "",
            "The treadmill's own console drives the belt; the Pi holds the key-circuit relay on "
            f"BCM {relay.pin} (hold-off {relay.hold_off_ms} ms as built) and can only stop the "
            "belt (docs/safety.md, SR-MON-*). The speed is read from the Pi's belt sensor "
            f"alone (BCM {sensor.pin}): there is no second channel, and the stage's "
            "acceleration and start speed are not enforced (the console's own ramp applies). "
            "The link check below is a 1 s controller hang instead of a pulled cable; the "
            "stops are the simulated console's key-circuit stop: measure the real one "
            "(docs/install.md, section 12).",
            "",
        ]
    if sensor is not None:
        return [
            "## Speed channels",
            "",
            f"Two independent belt speed channels: the motor controller's sensor and the Pi's "
            f"belt sensor on BCM {sensor.pin} ({sensor.distance_per_pulse_mm:g} mm a pulse). "
            f"They must agree within max({sensor.agree.abs_kmh:g} km/h, "
            f"{sensor.agree.rel:.0%}) plus ramp lag; a disagreement for more than "
            f"{sensor.agree.duration_ms} ms is an emergency stop (SR-CHAN-2). Overspeed, "
            "moving-at-rest and not-following use the safe one of the two readings (SR-CHAN-3).",
            "",
        ]
    lines = [
        "## Speed channels: double faults NOT covered",
        "",
        "This config has no `belt_sensor` section: the belt speed is read by the motor "
        "controller's sensor alone, and one sensor cannot check itself. These double faults "
        "are not detected by the controller (add a belt sensor on the Pi, docs/configuration.md):",
        "",
    ]
    lines.extend(f"* {text}" for text in UNCOVERED_WITHOUT_SECOND_CHANNEL)
    lines.append("")
    return lines


def format_markdown(report: VerifyReport, config: AppConfig) -> str:
    """The commissioning report as Markdown (also readable as plain text)."""
    safety = config.safety()
    lines = [
        f"# Commissioning report: `{report.config_path}`",
        "",
        f"Generated by `treadmill verify-config {report.config_path}` on "
        f"{report.created_utc:%Y-%m-%d %H:%M} UTC, on the simulated firmware "
        + (
            "on a virtual clock (the figures do not depend on the machine's load) "
            if report.virtual_time
            else "in real time "
        )
        + "(serial port "
        "replaced by the simulator, GPIO by mock pins; the config file itself is unchanged). "
        f"{report.check_count} checks in {report.wall_time_s:.0f} s.",
        "",
        "Stop time and distance run from the event (grip released, e-stop pressed, cable "
        f"pulled, runaway starting) to the true belt speed at or below {REST_KMH} km/h, with "
        "the belt first at the stage maximum. Limits come from the config: "
        f"stop ramp {safety.stop_decel_kmh_s:g} km/h/s, firmware lease {safety.lease_ms} ms "
        f"and deceleration {config.firmware.max_decel_kmh_s:g} km/h/s, overspeed "
        f"max({safety.overspeed_abs_kmh:g} km/h, {safety.overspeed_rel:.0%}) for "
        f"{safety.overspeed_ms} ms, plus {ALLOWANCE_S:g} s reaction allowance (see "
        "`controller/tools/verify.py`). The runaway is run with the firmware's own checks off, so "
        "the controller's overspeed check alone must catch it.",
        "",
        *channel_coverage(config),
    ]
    for stage_report in report.stages:
        lines.append(f"## {_stage_title(stage_report.stage)}")
        lines.append("")
        lines.append(
            "| check | speed at event | stop cause | stop time | limit | stop distance | "
            "peak | result |"
        )
        lines.append("|---|---|---|---|---|---|---|---|")
        for check in stage_report.checks:
            result = "PASS" if check.passed else "**FAIL**"
            if check.note:
                result += f": {check.note}"
            lines.append(
                f"| {CHECK_TITLES[check.check]} | {_num(check.speed_kmh, 'km/h')} | "
                f"{check.cause or '-'} | {_num(check.stop_time_s, 's')} | "
                f"{_num(check.limit_s, 's')} | {_num(check.stop_distance_m, 'm')} | "
                f"{_num(check.peak_kmh, 'km/h')} | {result} |"
            )
        lines.append("")
    lines.append("## Summary: worst case per stage")
    lines.append("")
    lines.append(
        "| stage | after grip loss | after e-stop | after link loss | after runaway | "
        "max speed | result |"
    )
    lines.append("|---|---|---|---|---|---|---|")
    for stage_report in report.stages:
        cells = []
        for name in CHECKS:
            time_s, distance_m = stage_report.worst([name])
            cells.append("-" if time_s is None else f"{time_s:.2f} s / {_num(distance_m, 'm')}")
        peak = next(c.peak_kmh for c in stage_report.checks if c.check == "max_speed")
        verdict = "PASS" if stage_report.passed else "**FAIL**"
        lines.append(
            f"| {stage_report.stage.number} {stage_report.stage.name} | "
            + " | ".join(cells)
            + f" | {_num(peak, 'km/h')} | {verdict} |"
        )
    lines.append("")
    if report.passed:
        lines.append(f"**Result: PASS**: all {report.check_count} checks hold.")
    else:
        lines.append(
            f"**Result: FAIL**: {report.failed_count} of {report.check_count} checks failed."
        )
    return "\n".join(lines) + "\n"


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
