"""Unlock criteria, demotion and the trainer action detector (pure)."""

from __future__ import annotations

from dataclasses import replace

from controller.training.config import TrainingConfig
from controller.training.progression import demotion_due, unlock_status
from controller.training.sessions import SessionRecord
from tests.training.helpers import T0, days, record

CONFIG = TrainingConfig()


def good_stage1(count: int) -> list[SessionRecord]:
    """``count`` stage-1 sessions on consecutive days: 12 min, 11 min continuous at 2.0 km/h."""
    return [
        record(session_id=f"s{index}", start=T0 + days(index), continuous={2.0: 11.0})
        for index in range(count)
    ]


def test_stage2_unlocks_after_six_sessions_the_last_three_long_enough_and_fault_free() -> None:
    status = unlock_status(good_stage1(6), 1, CONFIG, max_stage=4)
    assert status.next_stage == 2
    assert status.all_met
    assert [c.met for c in status.criteria] == [True, True, True]
    assert [c.actual for c in status.criteria] == [6, 3, 3]
    # every unlock needs the local trainer action unless auto_unlock is on
    assert status.needs_trainer


def test_five_sessions_are_not_enough() -> None:
    status = unlock_status(good_stage1(5), 1, CONFIG, max_stage=4)
    assert not status.all_met
    (unmet,) = status.unmet
    assert unmet.name.startswith("sessions at stage 1")
    assert (unmet.required, unmet.actual) == (6, 5)
    assert "5, needs 6 (NOT met)" in unmet.describe()


def test_one_of_the_last_three_too_short_at_speed_blocks_the_unlock() -> None:
    history = good_stage1(6)
    history[4] = replace(history[4], continuous_s_at_kmh=((2.0, 9.9 * 60),))
    status = unlock_status(history, 1, CONFIG, max_stage=4)
    assert not status.all_met
    (unmet,) = status.unmet
    assert "10 min continuous at 2 km/h" in unmet.name
    assert unmet.actual == 2


def test_an_early_short_session_outside_the_window_does_not_matter() -> None:
    history = good_stage1(6)
    history[0] = replace(history[0], continuous_s_at_kmh=((2.0, 60.0),))
    assert unlock_status(history, 1, CONFIG, max_stage=4).all_met


def test_a_fault_in_the_last_three_blocks_the_unlock() -> None:
    history = good_stage1(6)
    history[5] = replace(history[5], faults=("grip_lost",))
    status = unlock_status(history, 1, CONFIG, max_stage=4)
    assert not status.all_met
    (unmet,) = status.unmet
    assert "without a fault" in unmet.name
    assert unmet.actual == 2


def test_sessions_too_short_to_count_are_ignored() -> None:
    history = [*good_stage1(5), record(session_id="short", start=T0 + days(9), moving_min=4.9)]
    status = unlock_status(history, 1, CONFIG, max_stage=4)
    assert status.criteria[0].actual == 5


def test_history_order_does_not_matter() -> None:
    history = good_stage1(6)
    history[5] = replace(history[5], faults=("estop",))
    status = unlock_status(list(reversed(history)), 1, CONFIG, max_stage=4)
    assert status.unmet[0].actual == 2


def test_sessions_at_other_stages_do_not_count() -> None:
    history = [
        record(session_id=f"s{i}", start=T0 + days(i), stage=2, continuous={3.5: 11.0})
        for i in range(6)
    ]
    status = unlock_status(history, 1, CONFIG, max_stage=4)
    assert status.criteria[0].actual == 0


def test_stage3_rule_has_a_trainer_sign_off_even_with_auto_unlock() -> None:
    history = [
        record(session_id=f"s{i}", start=T0 + days(i), stage=2, continuous={3.5: 10.0})
        for i in range(6)
    ]
    auto = TrainingConfig(auto_unlock=True)
    status = unlock_status(history, 2, auto, max_stage=4)
    assert status.next_stage == 3
    assert status.all_met
    assert status.needs_trainer
    assert not unlock_status(good_stage1(6), 1, auto, max_stage=4).needs_trainer


def test_highest_stage_has_no_next_stage() -> None:
    status = unlock_status([], 4, CONFIG, max_stage=4)
    assert status.next_stage is None
    assert not status.all_met


def test_a_stage_without_a_rule_cannot_be_unlocked() -> None:
    config = TrainingConfig(unlock=CONFIG.unlock[:1])
    status = unlock_status([], 2, config, max_stage=4)
    assert status.next_stage == 3
    assert not status.all_met
    assert "unlock rule for stage 3" in status.unmet[0].name


# --------------------------------------------------------------------------- demotion


def grip_sessions(flags: list[bool], stage: int = 2) -> list[SessionRecord]:
    return [
        record(
            session_id=f"g{i}",
            start=T0 + days(i),
            stage=stage,
            grip_stops=1 if flag else 0,
            faults=("grip_lost",) if flag else (),
        )
        for i, flag in enumerate(flags)
    ]


def test_demotion_is_off_by_default() -> None:
    assert demotion_due(grip_sessions([True] * 5), 2, CONFIG, stage_since_utc=None) is None


def test_demotion_after_n_consecutive_sessions_with_a_grip_stop() -> None:
    config = TrainingConfig(demote_after_grip_stops=2)
    demotion = demotion_due(grip_sessions([False, True, True]), 2, config, stage_since_utc=None)
    assert demotion is not None
    assert (demotion.from_stage, demotion.to_stage) == (2, 1)
    assert "last 2 sessions at stage 2" in demotion.reason


def test_no_demotion_when_a_session_in_the_window_was_clean() -> None:
    config = TrainingConfig(demote_after_grip_stops=2)
    assert demotion_due(grip_sessions([True, False]), 2, config, stage_since_utc=None) is None
    assert demotion_due(grip_sessions([True]), 2, config, stage_since_utc=None) is None


def test_no_demotion_below_stage_1_and_only_sessions_since_the_last_change_count() -> None:
    config = TrainingConfig(demote_after_grip_stops=2)
    assert demotion_due(grip_sessions([True, True], 1), 1, config, stage_since_utc=None) is None
    history = grip_sessions([True, True, True])
    since = T0 + days(1.5)  # only the third session is after the stage changed
    assert demotion_due(history, 2, config, stage_since_utc=since) is None
