"""Scripted sessions on the simulator, checked against expectations: ``treadmill scenario``.

A scenario file (YAML, format in docs/scenarios.md) lists timed steps (grip, buttons, e-stop,
safety key, simulator faults, remote commands, ...) and expectations about what must follow
(the belt at most this fast then, this event between these times, this state, ...). The
runner drives the **real** :class:`~controller.service.Service` in real time, in-process,
against the simulated firmware on a pseudo-terminal and gpiozero mock pins, and records one
timeline row per control tick.

Every ``belt_kmh`` (timeline, expectations, stops) is the simulator's *true* belt speed, not
what the controller believes: a controller that misreads its sensor cannot pass by agreeing
with itself.

For every stop the report gives the cause, the stop time and the stop distance, measured from
the step that provoked it (a grip release, an e-stop press, a simulator fault, ...) to the
moment the true belt speed is at or below :data:`REST_KMH`.

Exit status of ``treadmill scenario``: 0 every expectation held, 1 one failed (or the run
could not be carried out), 2 the scenario file (or its config) is invalid; errors are printed
as ``PATH:LINE:COL: key.path: message``.

From Python::

    scenario = load_scenario(Path("scenarios/grip_loss_stage1_stops.yaml"))
    config = load_scenario_config(scenario)
    result = await run_scenario(scenario, config, timeline_path=Path("out.jsonl"))
    print(format_report(result))
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import math
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal, TextIO, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from controller.errors import ConfigError, ConfigIssue, ScenarioError, ScenarioRunError
from controller.model import Button, FaultCode, GripLossAction, Mode, StageConfig
from controller.schema_errors import closest, schema_issue
from controller.schema_errors import shown as _shown
from controller.yaml_loader import (
    KeyPart,
    YamlDocument,
    format_key_path,
    parse_yaml,
    read_config_text,
)

if TYPE_CHECKING:
    from controller.config import AppConfig
    from controller.service import Service, TickRecord

__all__ = [
    "EXIT_FAILED",
    "EXIT_INVALID",
    "EXIT_OK",
    "KNOWN_EVENT_KINDS",
    "REST_KMH",
    "ExpectSpec",
    "ExpectationResult",
    "Scenario",
    "ScenarioError",
    "ScenarioResult",
    "ScenarioRunError",
    "ScenarioSpec",
    "StepSpec",
    "StopRecord",
    "TimelineRow",
    "default_config_path",
    "format_report",
    "load_scenario",
    "load_scenario_config",
    "load_scenario_text",
    "run_scenario",
    "run_scenarios",
    "scenario_main",
    "write_plot",
    "write_timeline",
]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_INVALID: Final = 2

REST_KMH: Final = 0.1
"""True belt speed at or below which a stop is complete (km/h)."""

MAX_DURATION_S: Final = 600.0
"""Longest scenario accepted (s): scenarios run in real time."""

STARTUP_TIMEOUT_S: Final = 15.0
"""Time allowed for the service to open its inputs and finish the firmware handshake."""

_CLOCK_SLACK_S: Final = 0.002
"""Tick times are whole milliseconds; a step carried out within this of a tick counts as
before it."""

STOP_TRIGGER_WINDOW_S: Final = 10.0
"""A stop is attributed to the latest provoking step at most this long before the decision."""

KNOWN_EVENT_KINDS: Final[frozenset[str]] = frozenset(
    {
        # safety core (controller.core)
        "transition",
        "started",
        "stopped",
        "fault",
        "fault_folded",
        "fault_cleared",
        "grip_lost",
        "grip_warning",
        "grip_restored",
        "grip_sensor_suspect",
        "grip_sensor_stuck",
        "stage_changed",
        "stage_cap_changed",
        "target_changed",
        "command_rejected",
        "start_refused",
        "reset_refused",
        "reset_pending",
        "key_relay_opened",
        # service
        "link_lost",
        "link_restored",
        "gpio_chatter",
        "config_reloaded",
        "config_rejected",
        "config_applied",
        # training program
        "client_assigned",
        "client_cleared",
        "client_confirmed",
        "client_refused",
        "session_started",
        "session_finished",
        "session_interrupted",
        "session_complete",
        "session_guidance",
        "stage_unlocked",
        "unlock_refused",
        "demoted",
        "storage_error",
        "storage_recovered",
    }
)
"""Event kinds an expectation may name; a misspelt kind would make ``no_event`` pass."""

GRIP_CHOICES: Final = ("both", "left", "right", "none")

#: Simulator faults that take a ``value``, and the parameter it becomes.
SIM_FAULT_VALUE_PARAMS: Final[Mapping[str, str]] = {
    "drop_frames": "pct",
    "corrupt_bytes": "pct",
    "runaway": "accel_kmh_s",
    "belt_slip": "pct",
    "belt_sensor_noisy": "pct",
}
STATES: Final[tuple[str, ...]] = tuple(mode.value for mode in Mode)
FAULT_CODES: Final[tuple[str, ...]] = tuple(code.value for code in FaultCode)
BUTTONS: Final[tuple[str, ...]] = tuple(button.value for button in Button)


# --------------------------------------------------------------------------- file format

Seconds = Annotated[float, Field(ge=0.0, le=MAX_DURATION_S, allow_inf_nan=False)]
Speed = Annotated[float, Field(ge=0.0, le=100.0, allow_inf_nan=False)]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class MqttStepSpec(_Spec):
    """A remote command, handed to the service as the MQTT publisher would."""

    command: str = Field(min_length=1, max_length=64)
    payload: str | int | float | bool | dict[str, Any] | None = None

    def payload_bytes(self) -> bytes:
        if self.payload is None:
            return b""
        if isinstance(self.payload, str):
            return self.payload.encode("utf-8")
        return json.dumps(self.payload).encode("utf-8")


_STEP_ACTIONS: Final = (
    "grip",
    "press",
    "target_kmh",
    "stage",
    "safety_key",
    "estop",
    "sim_fault",
    "sim_clear",
    "mqtt",
    "client",
    "trainer",
    "reload",
    "inject",
    "console",
    "console_kmh",
    "hang_ms",
)


class StepSpec(_Spec):
    """One timed step: ``at_s`` and exactly one action."""

    at_s: Seconds
    grip: Literal["both", "left", "right", "none"] | None = None
    press: (
        Literal["start", "stop", "faster", "slower", "stage_up", "stage_down", "reset"] | None
    ) = None
    target_kmh: Speed | None = None
    stage: Annotated[int, Field(ge=1, le=20)] | None = None
    safety_key: Literal["removed", "inserted"] | None = None
    estop: Literal["pressed", "released"] | None = None
    sim_fault: str | None = None
    value: float | None = Field(default=None, allow_inf_nan=False)
    sim_clear: str | None = None
    mqtt: MqttStepSpec | None = None
    client: str | None = None
    trainer: bool | None = None
    reload: str | None = None  # a config file, relative to the scenario: applied as SIGHUP does
    inject: Literal["tick_error"] | None = None  # an exception in the next control tick
    console: Literal["start", "stop", "faster", "slower"] | None = None  # key-relay mode
    console_kmh: Speed | None = None  # key-relay mode: hold the console's + key to this speed
    # Key-relay mode: the controller hangs this long (its relay output stops changing).
    hang_ms: Annotated[int, Field(ge=1, le=10_000)] | None = None

    @model_validator(mode="after")
    def _one_action(self) -> StepSpec:
        given = [name for name in _STEP_ACTIONS if getattr(self, name) is not None]
        if len(given) != 1:
            shown = ", ".join(given) if given else "none"
            raise ValueError(
                f"a step needs exactly one action besides at_s (given: {shown}); actions: "
                + ", ".join(_STEP_ACTIONS)
            )
        if self.value is not None and self.sim_fault is None:
            raise ValueError(
                "'value' goes only with 'sim_fault' (e.g. {sim_fault: runaway, value: 2.0})"
            )
        return self

    @property
    def action(self) -> str:
        for name in _STEP_ACTIONS:
            if getattr(self, name) is not None:
                return name
        raise AssertionError("validated StepSpec without an action")

    def describe(self) -> str:
        """``grip none``, ``press start``, ``sim_fault runaway 2.0``, ``mqtt stop ''``..."""
        action = self.action
        if self.mqtt is not None:
            return f"mqtt cmd/{self.mqtt.command} {self.mqtt.payload_bytes().decode()!r}"
        if action == "sim_fault" and self.value is not None:
            return f"sim_fault {self.sim_fault} {self.value:g}"
        if action == "trainer":
            return f"trainer {'on' if self.trainer else 'off'}"
        return f"{action} {getattr(self, action)}"


_EXPECT_KINDS: Final = (
    "belt_kmh_at_most",
    "belt_kmh_at_least",
    "belt_kmh_never_above",
    "event",
    "no_event",
    "state",
    "fault",
    "stage",
    "target_kmh_at_most",
    "stop_within_s",
)
_AT_KINDS: Final = frozenset(
    {"belt_kmh_at_most", "belt_kmh_at_least", "state", "fault", "stage", "target_kmh_at_most"}
)
_RANGE_KINDS: Final = frozenset({"belt_kmh_never_above", "event", "no_event"})


class ExpectSpec(_Spec):
    """One expectation; which keys go together is listed in docs/scenarios.md."""

    at_s: Seconds | None = None
    from_s: Seconds | None = None
    to_s: Seconds | None = None
    belt_kmh_at_most: Speed | None = None
    belt_kmh_at_least: Speed | None = None
    belt_kmh_never_above: Speed | None = None
    event: str | None = None
    no_event: str | None = None
    message_contains: str | None = None
    state: Literal["idle", "running", "stopping", "faulted"] | None = None
    fault: str | None = None
    stage: Annotated[int, Field(ge=1, le=20)] | None = None
    target_kmh_at_most: Speed | None = None
    stop_within_s: Annotated[float, Field(gt=0.0, le=MAX_DURATION_S)] | None = None
    after_event: str | None = None
    after_s: Seconds | None = None
    max_distance_m: Annotated[float, Field(gt=0.0, le=1000.0)] | None = None

    @model_validator(mode="after")
    def _shape(self) -> ExpectSpec:
        given = [name for name in _EXPECT_KINDS if getattr(self, name) is not None]
        if len(given) != 1:
            shown = ", ".join(given) if given else "none"
            raise ValueError(
                f"an expectation checks exactly one thing (given: {shown}); one of: "
                + ", ".join(_EXPECT_KINDS)
            )
        kind = given[0]
        if kind in _AT_KINDS:
            if self.at_s is None or self.from_s is not None or self.to_s is not None:
                raise ValueError(f"{kind} is checked at one time: give at_s (not from_s/to_s)")
        elif kind in _RANGE_KINDS:
            if self.from_s is None or self.to_s is None or self.at_s is not None:
                raise ValueError(f"{kind} is checked over a time span: give from_s and to_s")
            if self.to_s < self.from_s:
                raise ValueError(f"to_s {self.to_s:g} is before from_s {self.from_s:g}")
        else:  # stop_within_s
            if (self.after_event is None) == (self.after_s is None):
                raise ValueError(
                    "stop_within_s needs exactly one of after_event (an event kind) or "
                    "after_s (a time)"
                )
            if self.at_s is not None or self.to_s is not None:
                raise ValueError(
                    "stop_within_s takes after_event or after_s (and optionally "
                    "from_s to skip earlier events), not at_s/to_s"
                )
        if self.message_contains is not None and kind != "event":
            raise ValueError("message_contains goes only with event")
        if self.max_distance_m is not None and kind != "stop_within_s":
            raise ValueError("max_distance_m goes only with stop_within_s")
        if (self.after_event is not None or self.after_s is not None) and kind != "stop_within_s":
            raise ValueError("after_event/after_s go only with stop_within_s")
        return self

    @property
    def kind(self) -> str:
        for name in _EXPECT_KINDS:
            if getattr(self, name) is not None:
                return name
        raise AssertionError("validated ExpectSpec without a kind")


class SimulatorSpec(_Spec):
    """Settings of the simulated firmware and belt for one scenario."""

    self_checks: bool = Field(
        default=True,
        description="the firmware's own plausibility checks (FW-12); off shows the "
        "controller's checks alone",
    )
    walker_on_belt: bool = Field(default=True, description="foot strikes slow the belt")


class ScenarioSpec(_Spec):
    """A whole scenario file."""

    description: str | None = Field(default=None, max_length=2000)
    config: str | None = Field(default=None, min_length=1)
    stage: Annotated[int, Field(ge=1, le=20)] | str = 1
    duration_s: Annotated[float, Field(gt=0.0, le=MAX_DURATION_S, allow_inf_nan=False)]
    seed: Annotated[int, Field(ge=0, le=2**32 - 1)] = 0
    training: bool = False
    simulator: SimulatorSpec = Field(default_factory=SimulatorSpec)
    steps: tuple[StepSpec, ...] = Field(default=(), strict=False)
    expect: tuple[ExpectSpec, ...] = Field(default=(), strict=False)


@dataclass(frozen=True)
class Scenario:
    """A validated scenario: its spec, where it came from, and where each key is written."""

    spec: ScenarioSpec
    source: str  # file path (or a name) used in messages
    base_dir: Path  # relative config paths are resolved against this
    document: YamlDocument | None = None

    @property
    def name(self) -> str:
        return Path(self.source).stem

    def issue(self, path: Sequence[KeyPart], message: str) -> ConfigIssue:
        if self.document is None:
            return ConfigIssue(self.source, 0, 0, format_key_path(path), message)
        return self.document.issue(path, message)


# --------------------------------------------------------------------------- loading


def _closest(name: str, allowed: Iterable[str]) -> str:
    match = closest(name, allowed)
    return f" (did you mean {match!r}?)" if match else ""


def _scenario_keys(loc: Sequence[KeyPart]) -> list[str]:
    """Names allowed at ``loc``: a step is one of two models, told apart by its first key."""
    names = [part for part in loc if isinstance(part, str)]
    model: type[BaseModel] = ScenarioSpec
    if names[:1] == ["simulator"]:
        model = SimulatorSpec
    elif names[:1] == ["steps"]:
        model = MqttStepSpec if names[1:2] == ["mqtt"] else StepSpec
    elif names[:1] == ["expect"]:
        model = ExpectSpec
    return sorted(model.model_fields)


def _check_names(scenario: Scenario) -> list[ConfigIssue]:
    """Checks that need more than the schema: event kinds, fault codes, times, sim faults."""
    spec = scenario.spec
    issues: list[ConfigIssue] = []
    sim_faults = _sim_fault_names()
    for index, step in enumerate(spec.steps):
        where: tuple[KeyPart, ...] = ("steps", index)
        if step.at_s > spec.duration_s:
            issues.append(
                scenario.issue(
                    (*where, "at_s"),
                    f"step at {step.at_s:g} s is after the end of the scenario "
                    f"(duration_s {spec.duration_s:g})",
                )
            )
        for key in ("sim_fault", "sim_clear"):
            name = getattr(step, key)
            if name is not None and sim_faults and name not in sim_faults:
                issues.append(
                    scenario.issue(
                        (*where, key),
                        f"unknown simulator fault {name!r}{_closest(name, sim_faults)}; "
                        f"the simulator can inject: {', '.join(sorted(sim_faults))}",
                    )
                )
        if step.value is not None and step.sim_fault not in SIM_FAULT_VALUE_PARAMS:
            issues.append(
                scenario.issue(
                    (*where, "value"),
                    f"simulator fault {step.sim_fault!r} takes no value; only "
                    + ", ".join(
                        f"{fault} ({param})" for fault, param in SIM_FAULT_VALUE_PARAMS.items()
                    )
                    + " do",
                )
            )
        if (step.client is not None or step.trainer is not None) and not spec.training:
            issues.append(
                scenario.issue(
                    (*where, step.action),
                    f"{step.action} steps need the training program: set 'training: true' at "
                    "the top of the scenario",
                )
            )
    for index, expectation in enumerate(spec.expect):
        where = ("expect", index)
        for key in ("at_s", "from_s", "to_s", "after_s"):
            value = getattr(expectation, key)
            if value is not None and value > spec.duration_s:
                issues.append(
                    scenario.issue(
                        (*where, key),
                        f"{key} {value:g} s is after the end of the scenario "
                        f"(duration_s {spec.duration_s:g})",
                    )
                )
        for key in ("event", "no_event", "after_event"):
            kind = getattr(expectation, key)
            if kind is not None and kind not in KNOWN_EVENT_KINDS:
                issues.append(
                    scenario.issue(
                        (*where, key),
                        f"unknown event kind {kind!r}{_closest(kind, KNOWN_EVENT_KINDS)}; "
                        f"known kinds: {', '.join(sorted(KNOWN_EVENT_KINDS))}",
                    )
                )
        if expectation.fault is not None and expectation.fault not in (*FAULT_CODES, "none"):
            issues.append(
                scenario.issue(
                    (*where, "fault"),
                    f"unknown fault code {expectation.fault!r}"
                    f"{_closest(expectation.fault, FAULT_CODES)}; use 'none' or one of: "
                    + ", ".join(FAULT_CODES),
                )
            )
    return issues


def _sim_fault_names() -> frozenset[str]:
    """Names of the faults the simulator can inject (empty if it cannot be imported)."""
    try:
        from firmware_bridge.sim.firmware import SimFault  # noqa: PLC0415 - heavy, lazy
    except ImportError:
        return frozenset()
    return frozenset(fault.value for fault in SimFault)


def load_scenario_text(text: str, source: str, *, base_dir: Path | None = None) -> Scenario:
    """Validate scenario ``text``; raises :class:`ScenarioError` naming line and key path."""
    try:
        document = parse_yaml(text, source)
    except ConfigError as exc:
        raise ScenarioError(exc.problems) from None
    if not isinstance(document.data, dict):
        raise ScenarioError(
            [
                document.issue(
                    (),
                    "a scenario is a mapping (duration_s:, steps:, expect:, ...); "
                    f"got {_shown(document.data)}",
                )
            ]
        )
    try:
        spec = ScenarioSpec.model_validate(document.data)
    except ValidationError as exc:
        raise ScenarioError(
            [
                schema_issue(document, error, ScenarioSpec, keys_at=_scenario_keys, union_tags=True)
                for error in exc.errors(include_url=False)
            ]
        ) from None
    scenario = Scenario(
        spec=spec,
        source=source,
        base_dir=base_dir if base_dir is not None else Path(source).resolve().parent,
        document=document,
    )
    issues = _check_names(scenario)
    if issues:
        raise ScenarioError(issues)
    return scenario


def load_scenario(path: Path) -> Scenario:
    """Read and validate the scenario file at ``path`` (raises :class:`ScenarioError`)."""
    try:
        text = read_config_text(path)
    except ConfigError as exc:
        raise ScenarioError(exc.problems) from None
    return load_scenario_text(text, str(path), base_dir=path.resolve().parent)


def default_config_path() -> Path:
    """The bundled ``config/demo.yaml`` (:mod:`controller.resources`)."""
    from controller.resources import bundled_config  # noqa: PLC0415 - keeps `--help` fast

    return bundled_config("demo.yaml")


def load_scenario_config(scenario: Scenario, override: Path | None = None) -> AppConfig:
    """The config a scenario runs on: ``override``, else its ``config:`` key (relative to the
    scenario file), else :func:`default_config_path`. Raises :class:`ScenarioError`."""
    from controller.config import load_config  # noqa: PLC0415 - keeps `--help` fast

    if override is not None:
        path = override
    elif scenario.spec.config is not None:
        path = scenario.base_dir / scenario.spec.config
        if not path.exists():
            raise ScenarioError(
                [scenario.issue(("config",), f"config file {str(path)!r} does not exist")]
            )
    else:
        path = default_config_path()
    try:
        config = load_config(path)
    except ConfigError as exc:
        raise ScenarioError(exc.problems) from None
    resolve_stage(scenario, config)
    return config


def resolve_stage(scenario: Scenario, config: AppConfig) -> int:
    """The scenario's stage as a number (it may be given by name); checked against ``config``."""
    stage = scenario.spec.stage
    names = [s.name for s in config.stages]
    if isinstance(stage, str):
        for index, name in enumerate(names):
            if name.casefold() == stage.casefold():
                return index + 1
        raise ScenarioError(
            [
                scenario.issue(
                    ("stage",),
                    f"no stage named {stage!r}{_closest(stage, names)}; stages: "
                    + ", ".join(f"{i + 1} {n}" for i, n in enumerate(names)),
                )
            ]
        )
    if stage > len(names):
        raise ScenarioError(
            [
                scenario.issue(
                    ("stage",), f"stage {stage} does not exist: the config has {len(names)} stages"
                )
            ]
        )
    return stage


# --------------------------------------------------------------------------- results


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


# --------------------------------------------------------------------------- running


def scenario_config(base: AppConfig, *, state_dir: str, training: bool) -> AppConfig:
    """``base`` pointed at the in-process simulator and mock pins, MQTT off, a temp state dir."""
    serial = base.serial.model_copy(update={"port": "sim://"})
    gpio = base.gpio.model_copy(update={"pin_factory": "mock", "mock_socket": None})
    mqtt = base.mqtt.model_copy(update={"enabled": False})
    training_section = base.training.model_copy(update={"enabled": training})
    return base.model_copy(
        update={
            "serial": serial,
            "gpio": gpio,
            "mqtt": mqtt,
            "state_dir": state_dir,
            "training": training_section,
        }
    )


def _grip_text(left: bool, right: bool) -> str:
    if left and right:
        return "both"
    if left:
        return "left"
    if right:
        return "right"
    return "none"


def _row(record: TickRecord, t0_ms: int) -> TimelineRow:
    state = record.state
    inputs = record.inputs
    firmware = inputs.firmware
    return TimelineRow(
        t_s=(record.now_ms - t0_ms) / 1000.0,
        belt_kmh=record.belt_true_kmh,
        measured_kmh=firmware.measured_kmh if firmware is not None else None,
        commanded_kmh=state.commanded_kmh,
        target_kmh=state.target_kmh,
        stage=state.stage,
        state=state.mode.value,
        grip=_grip_text(inputs.grip_left, inputs.grip_right),
        safety_key=inputs.safety_key_present,
        estop=inputs.estop_pressed,
        fault=state.fault.code.value if state.fault is not None else None,
        motion=type(record.motion).__name__,
        events=tuple((event.kind, event.message) for event in record.events),
    )


async def _wait_for(
    predicate: Callable[[], bool], timeout_s: float, what: str, run_task: asyncio.Task[int]
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        if run_task.done():
            code = run_task.result() if not run_task.cancelled() else "cancelled"
            raise ScenarioRunError(f"the service stopped (exit {code}) while waiting for {what}")
        if loop.time() > deadline:
            raise ScenarioRunError(f"timed out after {timeout_s:g} s waiting for {what}")
        await asyncio.sleep(0.002)  # polling a condition of the running service


class _Driver:
    """Carries out scenario steps on one running service."""

    def __init__(self, service: Service, reload_config: Callable[[str], AppConfig]) -> None:
        from controller.mockpanel import MockPanel  # noqa: PLC0415 - needs the service module

        self.service = service
        self.panel = MockPanel(service)
        self._reload_config = reload_config

    async def do(self, step: StepSpec) -> None:
        from controller.model import SelectStage, SetTarget  # noqa: PLC0415

        if step.grip is not None:
            self.panel.grip(step.grip)
        elif step.press is not None:
            self.panel.press(step.press)
        elif step.target_kmh is not None:
            self.service.submit_local(SetTarget(step.target_kmh))
        elif step.stage is not None:
            self.service.submit_local(SelectStage(step.stage))
        elif step.safety_key is not None:
            # The key and the e-stop are in series in the motor power path: the mock panel
            # opens the simulator's power circuit as well as the console input.
            self.panel.safety_key(step.safety_key == "inserted")
        elif step.estop is not None:
            self.panel.estop(step.estop == "pressed")
        elif step.sim_fault is not None:
            await _sim_inject(self.service.simulator, step.sim_fault, step.value)
        elif step.sim_clear is not None:
            await _sim_clear(self.service.simulator, step.sim_clear)
        elif step.mqtt is not None:
            self.panel.mqtt(step.mqtt.command, step.mqtt.payload_bytes())
        elif step.client is not None:
            self.panel.client(None if step.client == "none" else step.client)
        elif step.trainer is not None:
            self.panel.trainer_key(step.trainer)
        elif step.reload is not None:
            self.service.apply_config(self._reload_config(step.reload), step.reload)
        elif step.inject is not None:
            self.service.observers.append(_fail_once(self.service.observers))
        elif step.hang_ms is not None:
            # A hung controller: its relay output stops changing for hang_ms (modelled in the
            # simulator, so scenarios running alongside are not blocked).
            console = self.service.simulator
            if console is None or not hasattr(console, "hang_output"):
                raise ScenarioRunError(
                    "hang_ms steps need key-relay mode (drive.mode: key_relay) on the simulator"
                )
            console.hang_output(step.hang_ms)
        elif step.console is not None or step.console_kmh is not None:
            console = self.service.simulator
            if console is None or not hasattr(console, "press"):
                raise ScenarioRunError(
                    "console steps need key-relay mode (drive.mode: key_relay) on the simulator"
                )
            if step.console is not None:
                console.press(step.console)
            else:
                console.set_target(step.console_kmh)
        else:  # pragma: no cover - StepSpec validation requires one action
            raise ScenarioRunError(f"step at {step.at_s:g} s has no action")


def _fail_once(observers: list[Callable[[TickRecord], None]]) -> Callable[[TickRecord], None]:
    """An observer that raises in the next tick (the last part of the tick), then leaves."""

    def observer(_record: TickRecord) -> None:
        observers.remove(observer)
        raise RuntimeError("injected by the scenario: an exception in the control tick")

    return observer


async def _sim_inject(simulator: Any, name: str, value: float | None) -> None:
    if simulator is None:
        raise ScenarioRunError("no simulator: sim_fault steps need serial.port sim://")
    from firmware_bridge.sim.firmware import SimFault  # noqa: PLC0415

    fault = SimFault.parse(name)
    params: dict[str, Any] = {}
    if value is not None:
        params[SIM_FAULT_VALUE_PARAMS[fault.value]] = value
    await simulator.inject(fault, **params)


async def _sim_clear(simulator: Any, name: str) -> None:
    if simulator is None:
        raise ScenarioRunError("no simulator: sim_clear steps need serial.port sim://")
    from firmware_bridge.sim.firmware import SimFault  # noqa: PLC0415

    await simulator.clear(SimFault.parse(name))


def _sim_config(spec: SimulatorSpec) -> Any:
    from firmware_bridge.sim.firmware import SimConfig  # noqa: PLC0415
    from firmware_bridge.sim.physics import PhysicsParams  # noqa: PLC0415

    return SimConfig(
        self_checks=spec.self_checks,
        physics=PhysicsParams(walker_on_belt=spec.walker_on_belt),
    )


async def run_scenario(
    scenario: Scenario,
    config: AppConfig,
    *,
    timeline_path: Path | None = None,
    config_source: str = "",
) -> ScenarioResult:
    """Run ``scenario`` on ``config`` (pointed at the simulator and mock pins).

    In real time, or on a virtual clock when the running loop is a
    :class:`~controller.virtual_time.VirtualTimeLoop`: the service, the simulator and the
    runner then all read the loop's clock, and idle time costs nothing.

    Raises :class:`ScenarioRunError` when the service cannot be started; a step that fails
    is recorded in ``errors`` (and fails the result).
    """
    from controller.config import load_config  # noqa: PLC0415 - keeps `--help` fast
    from controller.gpio import mock_pin_factory  # noqa: PLC0415
    from controller.model import SelectStage  # noqa: PLC0415
    from controller.service import Service, monotonic_ms  # noqa: PLC0415
    from controller.virtual_time import VirtualTimeLoop  # noqa: PLC0415
    from firmware_bridge.sim.memory import MemorySimulator  # noqa: PLC0415
    from firmware_bridge.sim.pty import PtySimulator  # noqa: PLC0415

    spec = scenario.spec
    stage = resolve_stage(scenario, config)
    loop = asyncio.get_running_loop()
    virtual = isinstance(loop, VirtualTimeLoop)
    clock_ms = loop.clock_ms if isinstance(loop, VirtualTimeLoop) else monotonic_ms
    wall_start = loop.time()
    with tempfile.TemporaryDirectory(prefix="treadmill-scenario-") as state_dir:
        run_config = scenario_config(config, state_dir=state_dir, training=spec.training)
        # A stable link that disappears while "unplugged", like /dev/serial/by-id/...: a
        # reconnecting bridge must never open a recycled /dev/pts/N of another program.
        simulator: Any
        if config.drive.mode == "key_relay":
            from firmware_bridge.sim.console import ConsoleParams, ConsoleSimulator  # noqa: PLC0415

            simulator = ConsoleSimulator(
                ConsoleParams(physics=_sim_config(spec.simulator).physics),
                seed=spec.seed,
                clock_ms=clock_ms,
            )
        else:
            # On a virtual clock the cable is in memory; in real time it is a pseudo-terminal.
            simulator = (MemorySimulator if virtual else PtySimulator)(
                _sim_config(spec.simulator),
                seed=spec.seed,
                link_path=Path(state_dir) / "firmware.tty",
                clock_ms=clock_ms,
            )
        service = Service(
            run_config,
            pin_factory=mock_pin_factory(loop.time if virtual else None),
            simulator=simulator,
            enable_mqtt=False,
            install_signal_handlers=False,
            clock_ms=clock_ms,
        )
        records: list[TickRecord] = []
        service.observers.append(records.append)
        run_task = asyncio.create_task(service.run(), name=f"scenario-{scenario.name}")
        steps: list[StepRecord] = []
        errors: list[str] = []
        t0_ms = 0
        t0_loop = loop.time()
        try:
            await _wait_for(
                lambda: service.panel is not None, STARTUP_TIMEOUT_S, "the GPIO inputs", run_task
            )
            driver = _Driver(
                service,
                reload_config=lambda name: scenario_config(
                    load_config(scenario.base_dir / name),
                    state_dir=state_dir,
                    training=spec.training,
                ),
            )
            # Inputs at rest before the first tick: key in, e-stop released, no grip.
            driver.panel.reset_inputs()
            await _wait_for(
                service.ready.is_set,
                STARTUP_TIMEOUT_S,
                "the firmware handshake",
                run_task,
            )
            await _wait_for(lambda: bool(records), 2.0, "the first control tick", run_task)
            if stage != service.state.stage:
                service.submit_local(SelectStage(stage))
                await _wait_for(
                    lambda: service.state.stage == stage,
                    2.0,
                    f"stage {stage} to be selected",
                    run_task,
                )
            t0_ms = clock_ms()
            t0_loop = t0_ms / 1000.0  # the loop clock and clock_ms are the same clock
            await _run_steps(spec, driver, steps, t0_loop, run_task)
            remaining = t0_loop + spec.duration_s - loop.time()
            if remaining > 0 and not run_task.done():
                await asyncio.wait({run_task}, timeout=remaining)
            if run_task.done():
                errors.append(f"the service stopped early (exit {_exit_text(run_task)})")
        finally:
            shutdown_start = loop.time()
            service.request_shutdown("scenario finished")
            timeout_s = run_config.control.shutdown_timeout_s + 5.0
            done, _pending = await asyncio.wait({run_task}, timeout=timeout_s)
            if not done:
                run_task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await run_task
                errors.append(f"the service did not stop within {timeout_s:g} s")
            if t0_ms:
                end_s = shutdown_start - t0_loop
                steps.append(StepRecord(end_s, end_s, "shutdown", "end of scenario: shutdown"))
    exit_code = run_task.result() if run_task.done() and not run_task.cancelled() else -1
    if exit_code != 0:
        errors.append(f"the service exited with status {exit_code}")
    rows = tuple(_row(r, t0_ms) for r in records if r.now_ms >= t0_ms)
    rows_in_run = tuple(r for r in rows if r.t_s <= spec.duration_s + 1e-9)
    stops = find_stops(rows, steps)
    expectations = tuple(
        evaluate(index, expectation, rows_in_run, rows)
        for index, expectation in enumerate(spec.expect)
    )
    result = ScenarioResult(
        scenario=scenario,
        config_source=config_source,
        stage=stage,
        rows=rows,
        steps=tuple(steps),
        stops=stops,
        expectations=expectations,
        errors=(*errors, *(s.error for s in steps if s.error is not None)),
        service_exit_code=exit_code,
        wall_time_s=loop.time() - wall_start,
        loop_stats=service.loop_stats.as_dict(),
        stages=run_config.stage_configs(),
        machine_max_kmh=run_config.firmware.max_speed_kmh,
    )
    if timeline_path is not None:
        write_timeline(result, timeline_path)
    return result


async def run_scenarios(
    items: Sequence[tuple[Scenario, AppConfig]],
    *,
    jobs: int = 1,
    config_sources: Sequence[str] | None = None,
) -> list[ScenarioResult | ScenarioRunError]:
    """Run several scenarios in this event loop, at most ``jobs`` at a time.

    Each has its own service, simulator and mock pins. Results come back in the order of
    ``items``; a scenario that could not be run gives its :class:`ScenarioRunError`.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    gate = asyncio.Semaphore(jobs)

    async def one(index: int) -> ScenarioResult | ScenarioRunError:
        scenario, config = items[index]
        source = config_sources[index] if config_sources is not None else ""
        async with gate:
            try:
                return await run_scenario(scenario, config, config_source=source)
            except ScenarioRunError as exc:
                return exc

    return list(await asyncio.gather(*(one(i) for i in range(len(items)))))


def _exit_text(task: asyncio.Task[int]) -> str:
    if task.cancelled():
        return "cancelled"
    exc = task.exception()
    return repr(exc) if exc is not None else str(task.result())


async def _run_steps(
    spec: ScenarioSpec,
    driver: _Driver,
    records: list[StepRecord],
    t0_loop: float,
    run_task: asyncio.Task[int],
) -> None:
    """Carry out the steps at their times (loop clock), in file order for equal times."""
    loop = asyncio.get_running_loop()
    for step in sorted(spec.steps, key=lambda s: s.at_s):
        delay = t0_loop + step.at_s - loop.time()
        if delay > 0:
            await asyncio.wait({run_task}, timeout=delay)
        if run_task.done():
            return
        done_s = loop.time() - t0_loop
        error: str | None = None
        try:
            await driver.do(step)
        except Exception as exc:  # a failed step fails the scenario, with what went wrong
            error = f"step at {step.at_s:g} s ({step.describe()}) failed: {exc}"
            logger.error("%s", error)
        records.append(
            StepRecord(step.at_s, done_s, step.action, step.describe(), error, _provokes_stop(step))
        )


# --------------------------------------------------------------------------- analysis


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


# --------------------------------------------------------------------------- output


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


def check_plot_available() -> str | None:
    """None when matplotlib can be imported, else what to install."""
    try:
        import matplotlib  # noqa: F401, PLC0415 - optional extra, probed only
    except ImportError:
        return "--plot needs matplotlib, which is not installed: .venv/bin/pip install -e '.[plot]'"
    return None


_MARKED_EVENTS: Final = frozenset(
    {
        "fault",
        "started",
        "stopped",
        "grip_lost",
        "grip_warning",
        "command_rejected",
        "start_refused",
        "reset_refused",
        "fault_cleared",
        "link_lost",
        "link_restored",
    }
)


def _nan(value: float | None) -> float:
    return math.nan if value is None else value


_GRIP_HANDS: Final = {"both": 2, "left": 1, "right": 1, "none": 0}
_LABEL_GROUP_S: Final = 0.25  # events closer together than this share one label


def stage_limit_series(result: ScenarioResult) -> list[float]:
    """The stage's speed limit at every row (nan where the stage is unknown)."""
    limits: list[float] = []
    for row in result.rows:
        if 1 <= row.stage <= len(result.stages):
            limits.append(min(result.stages[row.stage - 1].max_kmh, result.machine_max_kmh))
        else:
            limits.append(math.nan)
    return limits


def grace_windows(result: ScenarioResult) -> list[tuple[float, float, int]]:
    """``(start_s, end_s, stage)`` of every grip grace window: the required grip was released
    while the belt ran at a stage that watches grip; its action is due at the end
    (SR-GRIP-*). A window ends early when the grip comes back."""
    windows: list[tuple[float, float, int]] = []
    held_before = True
    open_at: tuple[float, float, int] | None = None
    for row in result.rows:
        stage = result.stages[row.stage - 1] if 1 <= row.stage <= len(result.stages) else None
        watched = (
            stage is not None
            and stage.grip_hands_required > 0
            and stage.on_grip_loss is not GripLossAction.NONE
        )
        held = not watched or _GRIP_HANDS.get(row.grip, 0) >= (
            stage.grip_hands_required if stage is not None else 0
        )
        if open_at is not None and (held or row.t_s >= open_at[1]):
            windows.append((open_at[0], min(row.t_s, open_at[1]), open_at[2]))
            open_at = None
        if stage is not None and held_before and not held and row.state == "running":
            open_at = (row.t_s, row.t_s + stage.grip_grace_ms / 1000.0, stage.number)
        held_before = held
    if open_at is not None:
        windows.append(open_at)
    return windows


def grouped_events(result: ScenarioResult) -> list[tuple[float, list[str], bool]]:
    """Marked events as ``(t_s, kinds, alarm)``; events within 0.25 s share one label."""
    groups: list[tuple[float, list[str], bool]] = []
    for row in result.rows:
        for kind, _message in row.events:
            if kind not in _MARKED_EVENTS:
                continue
            alarm = kind in ("fault", "grip_lost")
            if groups and row.t_s - groups[-1][0] < _LABEL_GROUP_S:
                t_s, kinds, was_alarm = groups[-1]
                if kind not in kinds:
                    kinds.append(kind)
                groups[-1] = (t_s, kinds, was_alarm or alarm)
            else:
                groups.append((row.t_s, [kind], alarm))
    return groups


def write_plot(result: ScenarioResult, path: Path) -> None:
    """PNG of true, measured, commanded and target speed against time, with the stage limit,
    the grip grace windows, the events (labels above the plot) and the steps (below)."""
    import matplotlib  # noqa: PLC0415 - optional extra

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    rows = result.rows
    t = [r.t_s for r in rows]
    figure, axes = plt.subplots(figsize=(12, 6), dpi=100)
    try:
        limits = stage_limit_series(result)
        axes.plot(t, [_nan(r.belt_kmh) for r in rows], label="belt (true)", linewidth=2.0)
        axes.plot(t, [_nan(r.measured_kmh) for r in rows], label="measured", linewidth=1.0)
        axes.plot(t, [r.commanded_kmh for r in rows], label="commanded", linestyle="--")
        axes.plot(t, [r.target_kmh for r in rows], label="target", linestyle=":")
        axes.step(t, limits, where="post", color="black", linewidth=1.2, alpha=0.6,
                  label="stage limit")  # fmt: skip
        finite_limits = [v for v in limits if math.isfinite(v)]
        top = (
            max(
                [0.5, *finite_limits, *(v for r in rows for v in (r.belt_kmh or 0.0, r.target_kmh))]
            )
            * 1.12
        )
        for index, (start_s, end_s, stage) in enumerate(grace_windows(result)):
            axes.axvspan(
                start_s,
                end_s,
                color="orange",
                alpha=0.2,
                label="grip grace window" if index == 0 else None,
            )
            axes.text(
                (start_s + end_s) / 2, top * 0.5, f"grace\nstage {stage}", fontsize=7,
                ha="center", va="center", color="darkorange",
            )  # fmt: skip
        for t_s, kinds, alarm in grouped_events(result):
            colour = "red" if alarm else "dimgrey"
            axes.axvline(t_s, color=colour, alpha=0.4, linewidth=0.8)
            # Above the plot area, rotated: labels never cover the curves or each other.
            axes.annotate(
                ", ".join(kinds), xy=(t_s, 1.0), xycoords=("data", "axes fraction"),
                xytext=(0, 3), textcoords="offset points", rotation=60, fontsize=7,
                color=colour, ha="left", va="bottom", annotation_clip=False,
            )  # fmt: skip
        step_groups: list[tuple[float, list[str]]] = []
        for step in result.steps:
            axes.axvline(step.done_s, color="green", alpha=0.25, linewidth=0.6)
            if step_groups and step.done_s - step_groups[-1][0] < _LABEL_GROUP_S:
                step_groups[-1][1].append(step.text)
            else:
                step_groups.append((step.done_s, [step.text]))
        for done_s, texts in step_groups:
            axes.text(
                done_s,
                top * 0.02,
                " " + "; ".join(texts),
                rotation=90,
                fontsize=6,
                color="darkgreen",
                va="bottom",
                ha="right",
            )
        axes.set_ylim(0, top)
        axes.set_xlim(min(t, default=0.0), max(t, default=1.0))
        axes.set_xlabel("time (s)")
        axes.set_ylabel("speed (km/h)")
        verdict = "PASS" if result.passed else "FAIL"
        figure.suptitle(f"{result.scenario.name} ({verdict})", y=0.99)
        # The legend beside the plot, never over the curves or the event labels.
        axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
        axes.grid(alpha=0.3)
        figure.tight_layout(rect=(0, 0, 1, 0.93))
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path)
    finally:
        plt.close(figure)


# --------------------------------------------------------------------------- command line


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="treadmill scenario",
        description="Run scripted sessions on the simulated treadmill and check expectations "
        "(format: docs/scenarios.md). Exit 0 all held, 1 one failed, 2 invalid file.",
    )
    parser.add_argument(
        "files",
        nargs="*",
        type=Path,
        metavar="FILE",
        help="scenario YAML, or the name of a bundled scenario (see --list)",
    )
    parser.add_argument(
        "--list", action="store_true", help="list the bundled scenarios and where they are"
    )
    parser.add_argument("--config", type=Path, help="config to run on (overrides the file's)")
    parser.add_argument(
        "--timeline",
        type=Path,
        metavar="OUT.jsonl",
        help="write one JSON line per control tick (one FILE only)",
    )
    parser.add_argument(
        "--plot",
        type=Path,
        metavar="OUT.png",
        help="write a speed/time plot (needs matplotlib; one FILE only)",
    )
    parser.add_argument(
        "-j",
        "--jobs",
        type=int,
        default=1,
        help="run up to this many scenarios at once (each has its own simulator; default 1)",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="only validate the files (and their configs), do not run them",
    )
    parser.add_argument(
        "--virtual-time",
        action="store_true",
        help="run on a virtual clock: idle time costs nothing (the test suite's default)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log the service at INFO")
    return parser


def scenario_main(argv: list[str], out: TextIO | None = None, err: TextIO | None = None) -> int:
    """``treadmill scenario``; returns the exit status."""
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    parser = _parser()
    args = parser.parse_args(argv)
    if args.list:
        from controller.resources import bundled_scenarios, scenario_dir  # noqa: PLC0415

        library = bundled_scenarios()
        for path in library:
            out.write(f"{path.stem}\n")
        out.write(f"({len(library)} scenarios in {scenario_dir()})\n")
        return EXIT_OK
    if not args.files:
        parser.print_usage(err)
        err.write("treadmill scenario: give a scenario FILE or a bundled name (--list)\n")
        return EXIT_INVALID
    from controller.resources import resolve_scenario  # noqa: PLC0415

    args.files = [resolve_scenario(path) for path in args.files]
    if len(args.files) > 1 and (args.timeline or args.plot):
        err.write("--timeline and --plot take one scenario FILE\n")
        return EXIT_INVALID
    if args.plot is not None:
        problem = check_plot_available()
        if problem is not None:
            err.write(problem + "\n")
            return EXIT_INVALID
    _setup_logging(args.verbose, err)
    loaded: list[tuple[Scenario, AppConfig, str]] = []
    invalid = False
    for path in args.files:
        try:
            scenario = load_scenario(path)
            config = load_scenario_config(scenario, args.config)
        except ScenarioError as exc:
            for line in exc.lines():
                err.write(line + "\n")
            invalid = True
            continue
        source = str(
            args.config
            or (
                scenario.base_dir / scenario.spec.config
                if scenario.spec.config
                else default_config_path()
            )
        )
        loaded.append((scenario, config, source))
    if invalid:
        return EXIT_INVALID
    if args.check:
        for scenario, _config, _source in loaded:
            out.write(f"{scenario.source}: ok\n")
        return EXIT_OK
    if args.jobs < 1:
        err.write(f"--jobs must be at least 1, got {args.jobs}\n")
        return EXIT_INVALID
    batch = run_scenarios(
        [(scenario, config) for scenario, config, _source in loaded],
        jobs=args.jobs,
        config_sources=[source for _scenario, _config, source in loaded],
    )
    if args.virtual_time:
        from controller.virtual_time import run_virtual  # noqa: PLC0415

        results = run_virtual(batch)
    else:
        results = asyncio.run(batch)
    failed = 0
    for (scenario, _config, _source), result in zip(loaded, results, strict=True):
        if isinstance(result, ScenarioRunError):
            err.write(f"{scenario.source}: could not run: {result}\n")
            failed += 1
            continue
        out.write(format_report(result) + "\n")
        if args.timeline is not None:
            write_timeline(result, args.timeline)
            out.write(f"timeline written to {args.timeline}\n")
        if args.plot is not None:
            write_plot(result, args.plot)
            out.write(f"plot written to {args.plot}\n")
        if not result.passed:
            failed += 1
    if len(loaded) > 1:
        out.write(f"{len(loaded) - failed} of {len(loaded)} scenarios passed\n")
    return EXIT_FAILED if failed else EXIT_OK


def _setup_logging(verbose: bool, err: TextIO) -> None:
    handler = logging.StreamHandler(err)
    handler.setFormatter(logging.Formatter("%(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO if verbose else logging.WARNING)
