"""The commissioning report of ``treadmill verify-config``: the result of every check
(:class:`CheckResult`, :class:`StageReport`, :class:`VerifyReport`) and its Markdown.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Final

from controller.rules.grip import grip_watched
from controller.rules.model import StageConfig
from controller.tools.scenario_results import REST_KMH
from controller.tools.verify_limits import ALLOWANCE_S, CHECK_TITLES, CHECKS

if TYPE_CHECKING:
    from controller.settings.schema import AppConfig


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
        "`controller/tools/verify_limits.py`). The runaway is run with the firmware's own checks "
        "off, so the controller's overspeed check alone must catch it.",
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
