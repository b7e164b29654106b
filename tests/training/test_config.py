"""TrainingConfig: defaults from the domain table, ranges and clear messages."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from controller.training.config import TrainingConfig, check_against_stages
from tests.training.helpers import STAGES


def refused(data: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as caught:
        TrainingConfig.model_validate(data)
    return str(caught.value)


def test_defaults_are_the_documented_program() -> None:
    config = TrainingConfig()
    assert config.enabled
    assert config.session_end_rest_s == 120
    assert config.checkpoint_s == 30
    assert config.session_length_s(1) == config.session_length_s(2) == 15 * 60
    assert config.session_length_s(3) is None
    assert config.demote_after_grip_stops == 0
    assert not config.auto_unlock
    assert config.trainer.input == "trainer_key"
    assert config.trainer.buttons == ("stage_up", "reset")
    assert config.trainer.hold_ms == 3000
    assert config.db_file == "sessions.sqlite3"
    rules = {
        rule.stage: (
            rule.sessions_at_previous,
            rule.continuous_min,
            rule.at_kmh,
            rule.over_last_sessions,
            rule.no_faults_in_last,
            rule.trainer_confirm,
        )
        for rule in config.unlock
    }
    assert rules == {
        2: (6, 10.0, 2.0, 3, 3, False),
        3: (6, 10.0, 3.5, 3, 3, True),
        4: (6, 15.0, 5.5, 3, 3, True),
    }
    assert check_against_stages(config, STAGES) == []


def test_an_empty_section_is_the_default() -> None:
    assert TrainingConfig.model_validate({}) == TrainingConfig()


def test_the_model_is_frozen_and_strict() -> None:
    config = TrainingConfig()
    with pytest.raises(ValidationError):
        config.enabled = False
    assert "Extra inputs are not permitted" in refused({"checkpoint_seconds": 10})


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"checkpoint_s": 90}, "less than or equal to 60"),
        ({"checkpoint_s": 0.5}, "greater than or equal to 1"),
        ({"session_end_rest_s": 5}, "greater than or equal to 10"),
        ({"session_length_min": {1: 0.5}}, "stage 1: 0.5 min is outside 1..180 min"),
        ({"session_length_min": {0: 10}}, "stage 0 is outside 1..20"),
        ({"demote_after_grip_stops": -1}, "greater than or equal to 0"),
        ({"db_file": "../x.sqlite3"}, "must be a plain file name"),
        ({"trainer": {"buttons": ["stage_up"]}}, "at least 2 different buttons"),
        ({"trainer": {"buttons": ["stage_up", "start"]}}, "must not include 'start'"),
        ({"trainer": {"buttons": ["stage_up", "jump"]}}, "unknown button(s) ['jump']"),
        ({"trainer": {"buttons": ["reset", "reset"]}}, "lists a button twice"),
        ({"trainer": {"hold_ms": 200}}, "greater than or equal to 1000"),
        ({"trainer": {"input": "mqtt"}}, "'trainer_key' or 'buttons'"),
        ({"goal": {"sessions_min": 5, "sessions_max": 4}}, "sessions_max (4) is below"),
    ],
)
def test_out_of_range_values_are_refused_with_a_clear_message(
    data: dict[str, Any], message: str
) -> None:
    assert message in refused(data)


def rule(stage: int, **changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "stage": stage,
        "sessions_at_previous": 6,
        "continuous_min": 10,
        "at_kmh": 2.0,
        "over_last_sessions": 3,
        "no_faults_in_last": 3,
    }
    return base | changes


def test_unlock_rules_must_run_from_stage_2_in_order() -> None:
    assert "expected [2, 3]" in refused({"unlock": [rule(3), rule(2)]})
    assert "starting at stage 2" in refused({"unlock": [rule(3)]})


def test_unlock_windows_fit_in_the_session_count() -> None:
    message = refused({"unlock": [rule(2, over_last_sessions=7)]})
    assert "over_last_sessions (7) is larger than sessions_at_previous (6)" in message
    assert "continuous_min is 0" in refused({"unlock": [rule(2, continuous_min=0)]})


def test_rules_are_checked_against_the_stage_table() -> None:
    config = TrainingConfig.model_validate(
        {"unlock": [rule(2, at_kmh=2.5), rule(3), rule(4), rule(5)], "session_length_min": {6: 10}}
    )
    problems = check_against_stages(config, STAGES)
    assert problems == [
        "unlock[0]: at_kmh 2.5 is above stage 1's max_kmh 2.0: nobody could meet it; use at "
        "most 2.0",
        "unlock[3]: stage 5 is not in the stage table (stages 1..4): remove the rule or add the "
        "stage",
        "session_length_min: stage 6 is not in the stage table (stages 1..4)",
    ]
