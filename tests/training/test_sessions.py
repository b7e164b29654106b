"""Session tracking from ticks: start on first movement, end after the rest time, the figures."""

from __future__ import annotations

from datetime import timedelta

import pytest

from controller.rules.model import CoreState, Event, FaultCode, Mode
from controller.training.sessions import (
    MAX_TICK_GAP_MS,
    EndReason,
    SessionRecord,
    SessionStatus,
    SessionTracker,
    TrackerUpdate,
)
from tests.training.helpers import IDLE, T0, core, counter_ids


def tracker(rest_s: float = 120.0) -> SessionTracker:
    return SessionTracker(
        treadmill_id="tm1",
        session_end_rest_s=rest_s,
        standstill_kmh=0.1,
        thresholds_kmh=(2.0, 3.5),
        at_speed_tolerance_kmh=0.3,
        new_id=counter_ids("s"),
    )


class Feed:
    """Feeds a tracker ticks of ``tick_ms`` with explicit time."""

    def __init__(self, subject: SessionTracker, tick_ms: int = 100) -> None:
        self.subject = subject
        self.now_ms = 0
        self.tick_ms = tick_ms
        self.updates: list[TrackerUpdate] = []

    def ticks(
        self,
        seconds: float,
        state: CoreState,
        measured_kmh: float | None,
        *,
        events: tuple[Event, ...] = (),
        client_id: str | None = "c1",
    ) -> None:
        for index in range(round(seconds * 1000 / self.tick_ms)):
            self.now_ms += self.tick_ms
            self.updates.append(
                self.subject.update(
                    now_ms=self.now_ms,
                    utc=T0 + timedelta(milliseconds=self.now_ms),
                    core=state,
                    measured_kmh=measured_kmh,
                    events=events if index == 0 else (),
                    client_id=client_id,
                    stage_cap=2,
                )
            )

    @property
    def started(self) -> list[SessionRecord]:
        return [u.started for u in self.updates if u.started is not None]

    @property
    def finished(self) -> list[SessionRecord]:
        return [u.finished for u in self.updates if u.finished is not None]


def test_no_session_while_the_belt_is_at_rest() -> None:
    feed = Feed(tracker())
    feed.ticks(300, IDLE, 0.0)
    feed.ticks(10, IDLE, None)  # no firmware data yet: not movement
    assert feed.started == []
    assert not feed.subject.is_open


def test_session_starts_on_first_movement_above_standstill() -> None:
    feed = Feed(tracker())
    feed.ticks(1, IDLE, 0.1)  # exactly the standstill threshold is rest
    assert feed.started == []
    feed.ticks(0.1, core(kmh=0.5), 0.15)
    (started,) = feed.started
    assert started.status is SessionStatus.OPEN
    assert started.session_id == "s0001"
    assert started.start_utc == T0 + timedelta(milliseconds=1100)
    assert started.client_id == "c1"
    assert started.stage_cap == 2


def test_session_ends_after_the_rest_time_not_before() -> None:
    feed = Feed(tracker(rest_s=120))
    feed.ticks(60, core(kmh=2.0), 2.0)
    # rest counts from the first tick seen at rest: 120 s of ticks reach 119.9 s of it
    feed.ticks(120, IDLE, 0.0)
    assert feed.finished == []
    assert feed.subject.is_open
    feed.ticks(0.1, IDLE, 0.0)
    (finished,) = feed.finished
    assert finished.status is SessionStatus.COMPLETE
    assert finished.end_reason is EndReason.REST
    assert not feed.subject.is_open
    # the trailing rest is not part of the session
    assert finished.duration_s == pytest.approx(60.0)
    assert finished.end_utc == finished.start_utc + timedelta(seconds=60)


def test_a_pause_shorter_than_the_rest_time_keeps_one_session() -> None:
    feed = Feed(tracker(rest_s=120))
    feed.ticks(30, core(kmh=2.0), 2.0)
    feed.ticks(90, IDLE, 0.0)
    feed.ticks(30, core(kmh=2.0), 2.0)
    feed.ticks(121, IDLE, 0.0)
    assert len(feed.started) == 1
    (finished,) = feed.finished
    assert finished.moving_s == pytest.approx(60.0)
    assert finished.duration_s == pytest.approx(150.0)


def test_distance_moving_time_max_and_average() -> None:
    feed = Feed(tracker())
    feed.ticks(60, core(kmh=1.8), 1.8)  # 30 m
    feed.ticks(60, core(kmh=3.6, stage=2), 3.6)  # 60 m
    feed.ticks(121, IDLE, 0.0)
    (finished,) = feed.finished
    assert finished.moving_s == pytest.approx(120.0)
    assert finished.distance_m == pytest.approx(90.0)
    assert finished.max_kmh == pytest.approx(3.6)
    assert finished.avg_kmh == pytest.approx(2.7)
    assert dict(finished.stage_s) == pytest.approx({1: 60.0, 2: 60.0})
    assert finished.highest_stage == 2


def test_longest_continuous_run_at_speed_and_its_breaks() -> None:
    feed = Feed(tracker())
    feed.ticks(300, core(kmh=2.0), 1.95)  # 5 min at 2.0 (measured within tolerance)
    feed.ticks(10, core(kmh=1.5), 1.5)  # slower: the run breaks
    feed.ticks(420, core(kmh=2.0), 2.05)  # 7 min
    feed.ticks(60, core(kmh=2.0), 1.5)  # commanded 2.0 but the belt lags beyond tolerance
    feed.ticks(121, IDLE, 0.0)
    (finished,) = feed.finished
    assert finished.continuous_s(2.0) == pytest.approx(420.0)
    assert finished.continuous_s(3.5) == 0.0
    # an untracked lower speed uses the next tracked one above it (never over-counts)
    assert finished.continuous_s(1.0) == pytest.approx(420.0)
    # an untracked speed above every tracked one: nothing is known, 0
    assert finished.continuous_s(6.0) == 0.0


def test_run_at_speed_needs_the_core_running() -> None:
    feed = Feed(tracker())
    feed.ticks(60, core(Mode.STOPPING, kmh=2.0), 2.0)
    feed.ticks(121, IDLE, 0.0)
    (finished,) = feed.finished
    assert finished.moving_s == pytest.approx(60.0)
    assert finished.continuous_s(2.0) == 0.0


def test_faults_grip_and_stop_reasons_are_recorded_once_each() -> None:
    feed = Feed(tracker())
    feed.ticks(10, core(kmh=2.0), 2.0)
    feed.ticks(
        2,
        core(Mode.FAULTED, kmh=2.0, fault=FaultCode.GRIP_LOST),
        1.0,
        events=(Event("grip_lost", "grip lost"),),
    )
    feed.ticks(5, core(Mode.FAULTED, kmh=0.0, fault=FaultCode.GRIP_LOST), 0.0)
    feed.ticks(10, core(kmh=2.0), 2.0, events=(Event("grip_warning", "one hand"),))
    feed.ticks(2, core(Mode.STOPPING, kmh=0.0, stop_reason="session_complete"), 1.0)
    feed.ticks(121, core(Mode.IDLE, kmh=0.0, stop_reason="session_complete"), 0.0)
    (finished,) = feed.finished
    assert finished.faults == ("grip_lost",)
    assert finished.grip_stops == 1
    assert finished.grip_losses == 1
    assert finished.grip_warnings == 1
    assert finished.stop_reasons == ("session_complete",)


def test_a_stalled_loop_is_not_counted_beyond_the_gap_limit() -> None:
    feed = Feed(tracker())
    feed.ticks(1, core(kmh=3.6), 3.6)
    feed.tick_ms = 10_000  # one 10 s gap between two ticks
    feed.ticks(10, core(kmh=3.6), 3.6)
    feed.tick_ms = 100
    feed.ticks(121, IDLE, 0.0)
    (finished,) = feed.finished
    assert finished.moving_s == pytest.approx(0.9 + MAX_TICK_GAP_MS / 1000 + 0.0, abs=0.11)


def test_finish_closes_the_open_session_with_the_reason() -> None:
    feed = Feed(tracker())
    feed.ticks(30, core(kmh=2.0), 2.0)
    subject = feed.subject
    record = subject.finish(feed.now_ms, T0, EndReason.CLIENT_CHANGED)
    assert record is not None
    assert record.end_reason is EndReason.CLIENT_CHANGED
    assert record.moving_s == pytest.approx(29.9)  # from the first tick to the last
    assert subject.finish(feed.now_ms, T0, EndReason.SHUTDOWN) is None


def test_record_json_is_plain_data() -> None:
    feed = Feed(tracker())
    feed.ticks(30, core(kmh=2.0), 2.0)
    feed.ticks(121, IDLE, 0.0)
    (finished,) = feed.finished
    payload = finished.to_json()
    assert payload["status"] == "complete"
    assert payload["end_reason"] == "rest"
    assert payload["stage_s"] == {"1": pytest.approx(30.0)}
    assert payload["continuous_s_at_kmh"]["2.00"] == pytest.approx(30.0)
    assert payload["start_utc"].endswith("Z")  # one format with the state topic
