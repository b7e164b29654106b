"""Configuration of the training program: sessions, progression criteria, the trainer action.

Embedded in the application YAML as ``training:``. Every field has a default, so an empty
``training: {}`` section (or none at all) gives the program described in ``docs/training.md``:

* stage 2 unlocks after 6 sessions at stage 1, the last 3 of them with 10 min continuous at
  2.0 km/h or more and no faults;
* stage 3 after 6 sessions at stage 2, the last 3 with 10 min continuous at 3.5 km/h, no faults;
* stage 4 after 6 sessions at stage 3, the last 3 with 15 min continuous at 5.5 km/h.

Every unlock needs the local trainer action (trainer key, or a button combination held for
``hold_ms``) once the criteria are met; no remote message can unlock a stage.

Units are in the names: ``_s`` seconds, ``_ms`` milliseconds, ``_min`` minutes, ``_kmh`` km/h.
The checks that need the stage table (a rule for a stage that does not exist, a speed above the
previous stage's maximum) are in :func:`check_against_stages`, which the config loader calls.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from controller.rules.model import StageConfig

#: Console buttons a trainer combination may use (names of :class:`controller.rules.model.Button`).
TRAINER_BUTTON_NAMES = ("start", "stop", "faster", "slower", "stage_up", "stage_down", "reset")

#: A client id is opaque (no names, no personal data): 1 to 64 characters of this set.
CLIENT_ID_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")

_STRICT = ConfigDict(extra="forbid", frozen=True)


class TrainerActionConfig(BaseModel):
    """How a trainer confirms an unlock at the machine (local only).

    ``input: trainer_key``: a key switch wired to the GPIO input ``gpio.inputs.trainer_key``;
    a STAGE UP press while the key is on is one action. ``input: buttons``: every button in
    ``buttons`` held together for ``hold_ms`` is one action. The service detects the action and
    passes it to the training program; no remote message is ever one.
    """

    model_config = _STRICT

    input: Literal["trainer_key", "buttons"] = "trainer_key"
    buttons: tuple[str, ...] = ("stage_up", "reset")
    hold_ms: int = Field(default=3000, ge=1000, le=10_000)

    @field_validator("buttons")
    @classmethod
    def _known_distinct_buttons(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [name for name in value if name not in TRAINER_BUTTON_NAMES]
        if unknown:
            raise ValueError(
                f"unknown button(s) {unknown}: use names from {list(TRAINER_BUTTON_NAMES)}"
            )
        if len(set(value)) != len(value):
            raise ValueError(f"buttons {list(value)} lists a button twice")
        if len(value) < 2:
            raise ValueError(
                f"buttons {list(value)}: a trainer combination needs at least 2 different "
                "buttons held together, so that a single press can never unlock a stage"
            )
        if "start" in value:
            raise ValueError(
                "buttons must not include 'start': holding the combination must never also "
                "start the belt"
            )
        return value


class UnlockRule(BaseModel):
    """What a client must have done at stage ``stage - 1`` before ``stage`` can be unlocked.

    * ``sessions_at_previous``: counted sessions whose highest stage was ``stage - 1``
      (a session counts when the belt moved at least ``TrainingConfig.count_session_min``).
    * ``over_last_sessions``: each of the last this-many of those sessions had at least
      ``continuous_min`` minutes of continuous walking at ``at_kmh`` or faster.
    * ``no_faults_in_last``: none of the last this-many of those sessions had a latched fault.
    * ``trainer_confirm``: a trainer sign-off is part of the criteria (shown as such). Every
      unlock is carried out by the local trainer action in any case, unless
      ``TrainingConfig.auto_unlock`` is on and this is false.
    """

    model_config = _STRICT

    stage: int = Field(ge=2, le=20)
    sessions_at_previous: int = Field(ge=1, le=100)
    continuous_min: float = Field(ge=0.0, le=120.0)
    at_kmh: float = Field(gt=0.0, le=30.0)
    over_last_sessions: int = Field(ge=0, le=100)
    no_faults_in_last: int = Field(ge=0, le=100)
    trainer_confirm: bool = True

    @model_validator(mode="after")
    def _windows_fit(self) -> Self:
        for name in ("over_last_sessions", "no_faults_in_last"):
            window = getattr(self, name)
            if window > self.sessions_at_previous:
                raise ValueError(
                    f"{name} ({window}) is larger than sessions_at_previous "
                    f"({self.sessions_at_previous}): it must be between 0 and "
                    f"{self.sessions_at_previous}"
                )
        if self.over_last_sessions > 0 and self.continuous_min == 0.0:
            raise ValueError(
                "continuous_min is 0 while over_last_sessions > 0: set the minutes the client "
                "must walk continuously, or set over_last_sessions to 0"
            )
        return self


def _default_unlock_rules() -> tuple[UnlockRule, ...]:
    return (
        UnlockRule(
            stage=2,
            sessions_at_previous=6,
            continuous_min=10.0,
            at_kmh=2.0,
            over_last_sessions=3,
            no_faults_in_last=3,
            trainer_confirm=False,
        ),
        UnlockRule(
            stage=3,
            sessions_at_previous=6,
            continuous_min=10.0,
            at_kmh=3.5,
            over_last_sessions=3,
            no_faults_in_last=3,
            trainer_confirm=True,
        ),
        UnlockRule(
            stage=4,
            sessions_at_previous=6,
            continuous_min=15.0,
            at_kmh=5.5,
            over_last_sessions=3,
            no_faults_in_last=3,
            trainer_confirm=True,
        ),
    )


def _default_session_lengths() -> dict[int, float | None]:
    return {1: 15.0, 2: 15.0}


class WeeklyGoalConfig(BaseModel):
    """The usual practice: 3 to 4 sessions a week of 10 to 15 minutes (used by ``history``)."""

    model_config = _STRICT

    sessions_min: int = Field(default=3, ge=1, le=14)
    sessions_max: int = Field(default=4, ge=1, le=14)
    session_min_min: float = Field(default=10.0, gt=0.0, le=120.0)
    session_max_min: float = Field(default=15.0, gt=0.0, le=120.0)

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.sessions_max < self.sessions_min:
            raise ValueError(
                f"sessions_max ({self.sessions_max}) is below sessions_min ({self.sessions_min})"
            )
        if self.session_max_min < self.session_min_min:
            raise ValueError(
                f"session_max_min ({self.session_max_min}) is below session_min_min "
                f"({self.session_min_min})"
            )
        return self


class TrainingConfig(BaseModel):
    """The ``training:`` section of the application YAML. Every field has a safe default."""

    model_config = _STRICT

    enabled: bool = True
    #: A session ends after the belt has been at rest this long.
    session_end_rest_s: float = Field(default=120.0, ge=10.0, le=3600.0)
    #: The open session is saved at least this often: a power cut loses at most this much.
    checkpoint_s: float = Field(default=30.0, ge=1.0, le=60.0)
    #: Moving minutes after which the program asks for a controlled stop (``session_complete``),
    #: per stage. A stage that is absent or ``null`` has no limit.
    session_length_min: dict[int, float | None] = Field(default_factory=_default_session_lengths)
    #: Event ``session_guidance`` this many seconds before the session length is reached (0 = off).
    session_warning_s: float = Field(default=60.0, ge=0.0, le=600.0)
    #: A session counts towards unlocking only when the belt moved at least this many minutes.
    count_session_min: float = Field(default=5.0, ge=0.0, le=120.0)
    #: Demotion: a client whose last N sessions at their unlocked stage (above 1) each ended with
    #: at least one grip-loss stop goes down one stage. 0 turns demotion off.
    demote_after_grip_stops: int = Field(default=0, ge=0, le=20)
    #: Unlock a stage whose rule has ``trainer_confirm: false`` automatically when a session
    #: meets its criteria. Off: every unlock needs the local trainer action.
    auto_unlock: bool = False
    #: Continuous walking counts while the belt runs with its set-point at or above the speed and
    #: the measured speed no lower than the speed minus this tolerance.
    at_speed_tolerance_kmh: float = Field(default=0.3, ge=0.0, le=1.0)
    trainer: TrainerActionConfig = Field(default_factory=TrainerActionConfig)
    unlock: tuple[UnlockRule, ...] = Field(default_factory=_default_unlock_rules)
    goal: WeeklyGoalConfig = Field(default_factory=WeeklyGoalConfig)
    #: SQLite file name, relative to the application's state directory.
    db_file: str = "sessions.sqlite3"

    @field_validator("session_length_min")
    @classmethod
    def _lengths_in_range(cls, value: dict[int, float | None]) -> dict[int, float | None]:
        for stage, minutes in value.items():
            if not 1 <= stage <= 20:
                raise ValueError(f"stage {stage} is outside 1..20")
            if minutes is not None and not 1.0 <= minutes <= 180.0:
                raise ValueError(
                    f"stage {stage}: {minutes} min is outside 1..180 min (use null for no limit)"
                )
        return value

    @field_validator("unlock")
    @classmethod
    def _rules_contiguous(cls, value: tuple[UnlockRule, ...]) -> tuple[UnlockRule, ...]:
        stages = [rule.stage for rule in value]
        expected = list(range(2, 2 + len(value)))
        if stages != expected:
            raise ValueError(
                f"unlock rules are for stages {stages}: list one rule per stage, in order, "
                f"starting at stage 2 (expected {expected})"
            )
        return value

    @field_validator("db_file")
    @classmethod
    def _plain_file_name(cls, value: str) -> str:
        if not value or "/" in value or "\\" in value or value in {".", ".."}:
            raise ValueError(
                f"db_file {value!r} must be a plain file name (it is created in the state "
                "directory), e.g. 'sessions.sqlite3'"
            )
        return value

    def session_length_s(self, stage: int) -> float | None:
        """The moving time (s) after which a session at ``stage`` is complete, or None."""
        minutes = self.session_length_min.get(stage)
        return None if minutes is None else minutes * 60.0

    def rule_for(self, stage: int) -> UnlockRule | None:
        """The unlock rule for ``stage``, or None when there is none."""
        for rule in self.unlock:
            if rule.stage == stage:
                return rule
        return None


def check_against_stages(config: TrainingConfig, stages: Sequence[StageConfig]) -> list[str]:
    """Problems between the training config and the stage table, as messages (empty: fine).

    The config loader turns each message into an error at ``training.unlock``; the training
    program refuses to start with any of them.
    """
    problems: list[str] = []
    by_number = {stage.number: stage for stage in stages}
    for index, rule in enumerate(config.unlock):
        if rule.stage not in by_number:
            problems.append(
                f"unlock[{index}]: stage {rule.stage} is not in the stage table (stages "
                f"1..{len(stages)}): remove the rule or add the stage"
            )
            continue
        previous = by_number.get(rule.stage - 1)
        if previous is not None and rule.at_kmh > previous.max_kmh + 1e-9:
            problems.append(
                f"unlock[{index}]: at_kmh {rule.at_kmh} is above stage {previous.number}'s "
                f"max_kmh {previous.max_kmh}: nobody could meet it; use at most "
                f"{previous.max_kmh}"
            )
    for stage in config.session_length_min:
        if stage not in by_number:
            problems.append(
                f"session_length_min: stage {stage} is not in the stage table (stages "
                f"1..{len(stages)})"
            )
    return problems
