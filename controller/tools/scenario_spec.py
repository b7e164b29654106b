"""The scenario file format: steps and expectations as pydantic models, and loading a scenario and
its config with line-numbered errors.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from controller.errors import ConfigError, ConfigIssue, ScenarioError
from controller.rules.model import Button, FaultCode, Mode
from controller.settings.schema_errors import closest, schema_issue
from controller.settings.schema_errors import shown as _shown
from controller.settings.yaml_loader import (
    KeyPart,
    YamlDocument,
    format_key_path,
    parse_yaml,
    read_config_text,
)

if TYPE_CHECKING:
    from controller.settings.schema import AppConfig


MAX_DURATION_S: Final = 600.0
"""Longest scenario accepted (s): scenarios run in real time."""


KNOWN_EVENT_KINDS: Final[frozenset[str]] = frozenset(
    {
        # safety core (controller.rules.core)
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
    from controller.settings.config import load_config  # noqa: PLC0415 - keeps `--help` fast

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
    _check_reload_files(scenario)
    return config


def _check_reload_files(scenario: Scenario) -> None:
    """Every ``reload:`` file exists and is a valid config, checked before the run starts (and
    by ``--check``), so a typo cannot surface halfway through a run. Raises ScenarioError."""
    from controller.settings.config import load_config  # noqa: PLC0415 - keeps `--help` fast

    issues: list[ConfigIssue] = []
    for index, step in enumerate(scenario.spec.steps):
        if step.reload is None:
            continue
        path = scenario.base_dir / step.reload
        where: tuple[KeyPart, ...] = ("steps", index, "reload")
        if not path.is_file():
            issues.append(scenario.issue(where, f"config file {str(path)!r} does not exist"))
            continue
        try:
            load_config(path)
        except ConfigError as exc:
            issues.append(
                scenario.issue(
                    where, f"config file {str(path)!r} is not a valid config; its problems follow"
                )
            )
            issues.extend(exc.problems)
    if issues:
        raise ScenarioError(issues)


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
