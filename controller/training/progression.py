"""Stage progression (pure): unlock criteria and demotion.

A client's *unlocked stage* is the highest stage the program lets them use; it is the stage
cap of their sessions. It rises by one stage at a time, only by the local trainer action once
every criterion of that stage's rule is met (see :class:`~controller.training.config.UnlockRule`
and ``docs/training.md``), and falls by one stage when the demotion rule fires.

Nothing here reads a clock or a file: histories and times come in as arguments.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from controller.training.config import TrainingConfig, UnlockRule
from controller.training.sessions import SessionRecord


@dataclass(frozen=True)
class Criterion:
    """One unlock criterion: met when ``actual >= required``."""

    name: str
    required: float
    actual: float
    met: bool

    def describe(self) -> str:
        mark = "met" if self.met else "NOT met"
        return f"{self.name}: {_number(self.actual)}, needs {_number(self.required)} ({mark})"

    def to_json(self) -> dict[str, str | float | bool]:
        return {
            "name": self.name,
            "required": self.required,
            "actual": self.actual,
            "met": self.met,
        }


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.1f}"


@dataclass(frozen=True)
class UnlockStatus:
    """Where a client stands towards the next stage.

    ``next_stage`` is None when the client is at the highest stage. ``all_met``: every criterion
    from the session log is met. ``needs_trainer``: the unlock is carried out by the local
    trainer action (true for every rule unless ``auto_unlock`` is on and the rule does not ask
    for a trainer sign-off).
    """

    current_stage: int
    next_stage: int | None
    criteria: tuple[Criterion, ...]
    all_met: bool
    needs_trainer: bool

    @property
    def unmet(self) -> tuple[Criterion, ...]:
        return tuple(criterion for criterion in self.criteria if not criterion.met)

    def to_json(self) -> dict[str, object]:
        return {
            "current_stage": self.current_stage,
            "next_stage": self.next_stage,
            "criteria": [criterion.to_json() for criterion in self.criteria],
            "all_met": self.all_met,
            "needs_trainer": self.needs_trainer,
        }


def counted(record: SessionRecord, config: TrainingConfig) -> bool:
    """A session counts towards unlocking when the belt moved at least ``count_session_min``."""
    return record.moving_s >= config.count_session_min * 60.0 - 1e-9


def unlock_status(
    client_history: Sequence[SessionRecord],
    current_unlocked_stage: int,
    config: TrainingConfig,
    *,
    max_stage: int,
) -> UnlockStatus:
    """Evaluate the rule for ``current_unlocked_stage + 1`` on the client's sessions.

    ``client_history`` may be in any order (it is sorted by start time here) and may include
    the open session. ``max_stage`` is the number of stages in the stage table.
    """
    current = max(1, current_unlocked_stage)
    if current >= max_stage:
        return UnlockStatus(current, None, (), all_met=False, needs_trainer=False)
    target = current + 1
    rule = config.rule_for(target)
    if rule is None:
        missing = Criterion(
            name=f"an unlock rule for stage {target} in training.unlock",
            required=1,
            actual=0,
            met=False,
        )
        return UnlockStatus(current, target, (missing,), all_met=False, needs_trainer=True)

    previous = target - 1
    at_previous = [
        record
        for record in sorted(client_history, key=lambda record: record.start_utc)
        if record.highest_stage == previous and counted(record, config)
    ]
    criteria = _criteria(rule, previous, at_previous, config)
    needs_trainer = rule.trainer_confirm or not config.auto_unlock
    return UnlockStatus(
        current_stage=current,
        next_stage=target,
        criteria=tuple(criteria),
        all_met=all(criterion.met for criterion in criteria),
        needs_trainer=needs_trainer,
    )


def _criteria(
    rule: UnlockRule, previous: int, at_previous: Sequence[SessionRecord], config: TrainingConfig
) -> list[Criterion]:
    """The criteria of ``rule`` over the counted sessions at stage ``previous`` (oldest first)."""
    criteria = [
        Criterion(
            name=f"sessions at stage {previous} (at least {config.count_session_min:g} min)",
            required=rule.sessions_at_previous,
            actual=len(at_previous),
            met=len(at_previous) >= rule.sessions_at_previous,
        )
    ]
    if rule.over_last_sessions > 0:
        window = at_previous[-rule.over_last_sessions :]
        continuous_ok = sum(
            1
            for record in window
            if record.continuous_s(rule.at_kmh) >= rule.continuous_min * 60.0 - 1e-6
        )
        criteria.append(
            Criterion(
                name=(
                    f"of the last {rule.over_last_sessions} sessions at stage {previous}, those "
                    f"with {rule.continuous_min:g} min continuous at {rule.at_kmh:g} km/h or more"
                ),
                required=rule.over_last_sessions,
                actual=continuous_ok,
                met=continuous_ok >= rule.over_last_sessions,
            )
        )
    if rule.no_faults_in_last > 0:
        window = at_previous[-rule.no_faults_in_last :]
        fault_free = sum(1 for record in window if not record.faults)
        criteria.append(
            Criterion(
                name=(
                    f"of the last {rule.no_faults_in_last} sessions at stage {previous}, "
                    "those without a fault"
                ),
                required=rule.no_faults_in_last,
                actual=fault_free,
                met=fault_free >= rule.no_faults_in_last,
            )
        )
    return criteria


@dataclass(frozen=True)
class Demotion:
    """The demotion rule fired: ``from_stage`` -> ``to_stage``, with the reason in words."""

    from_stage: int
    to_stage: int
    reason: str


def demotion_due(
    client_history: Sequence[SessionRecord],
    unlocked_stage: int,
    config: TrainingConfig,
    *,
    stage_since_utc: datetime | None,
) -> Demotion | None:
    """Apply the demotion rule to a client's sessions; None when it does not fire.

    With ``demote_after_grip_stops = N > 0`` and an unlocked stage above 1: the client goes down
    one stage when their last N sessions at that stage, all started after the stage was last
    changed (``stage_since_utc``; None = ever), each had at least one grip-loss stop. Short
    sessions count too: a grip-loss stop is often what cut a session short.
    """
    limit = config.demote_after_grip_stops
    if limit <= 0 or unlocked_stage <= 1:
        return None
    at_stage = [
        record
        for record in sorted(client_history, key=lambda record: record.start_utc)
        if record.highest_stage == unlocked_stage
        and (stage_since_utc is None or record.start_utc >= stage_since_utc)
    ]
    window = at_stage[-limit:]
    if len(window) < limit or not all(record.grip_stops > 0 for record in window):
        return None
    return Demotion(
        from_stage=unlocked_stage,
        to_stage=unlocked_stage - 1,
        reason=(
            f"each of the last {limit} sessions at stage {unlocked_stage} ended with a "
            "grip-loss stop"
        ),
    )
