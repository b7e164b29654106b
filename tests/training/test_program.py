"""TrainingProgram: sessions, clients, caps, unlocks and the non-blocking session log."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from controller.errors import StoreSchemaTooNewError
from controller.rules.model import Event, FaultCode, Mode
from controller.training.config import TrainingConfig
from controller.training.program import TrainingProgram
from controller.training.sessions import SessionRecord, SessionStatus
from controller.training.store import ClientRecord, SessionStore
from tests.training.helpers import (
    IDLE,
    STAGES,
    T0,
    Driver,
    core,
    counter_ids,
    days,
    record,
    wait_until,
)

FAST = TrainingConfig(session_end_rest_s=10, checkpoint_s=1)


def make(
    config: TrainingConfig = FAST,
    db_path: Path | None = None,
    *,
    busy_timeout_ms: int = 50,
) -> TrainingProgram:
    return TrainingProgram(
        config,
        STAGES,
        treadmill_id="tm1",
        db_path=db_path,
        new_id=counter_ids(),
        busy_timeout_ms=busy_timeout_ms,
        retry_initial_s=0.01,
        retry_max_s=0.05,
    )


@asynccontextmanager
async def running(program: TrainingProgram) -> AsyncIterator[list[Event]]:
    """Open the program and run its writer as a task, the way the service does."""
    opened = await program.open()
    writer = asyncio.create_task(program.run_writer(), name="training-writer")
    try:
        yield opened
    finally:
        await program.close()
        writer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await writer


def seed(path: Path, sessions: list[SessionRecord], clients: tuple[ClientRecord, ...] = ()) -> None:
    store = SessionStore.open(path)
    store.write(sessions=sessions, clients=list(clients))
    store.close()


def read_back(path: Path) -> tuple[list[SessionRecord], dict[str, ClientRecord]]:
    store = SessionStore.open(path)
    try:
        return store.sessions(), store.clients()
    finally:
        store.close()


def good_stage1(client_id: str = "c1", count: int = 6) -> list[SessionRecord]:
    return [
        record(
            session_id=f"old{i}",
            client_id=client_id,
            start=T0 - days(20 - i),
            continuous={2.0: 11.0},
        )
        for i in range(count)
    ]


async def tick_until(drive: Driver, condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Tick at rest (events raised between ticks arrive with a tick) until ``condition``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        drive.tick(IDLE, 0.0)
        await asyncio.sleep(0.005)


def kinds(events: tuple[Event, ...] | list[Event]) -> list[str]:
    return [event.kind for event in events]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- sessions


async def test_session_lifecycle_in_memory_and_client_cleared_at_the_end() -> None:
    program = make()
    drive = Driver(program)
    async with running(program):
        event = program.assign_client("c7", belt_at_rest=True, source="console")
        assert event.kind == "client_assigned"
        drive.rest(1)
        first = drive.tick(core(kmh=0.5), 0.5)
        assert kinds(first.events) == ["session_started"]
        assert first.session is not None
        assert first.session["client_id"] == "c7"
        drive.run(60, core(kmh=2.0), 2.0)
        assert drive.ticks[-1].session is not None
        assert drive.ticks[-1].session["moving_s"] == pytest.approx(60.0, abs=0.11)
        assert drive.ticks[-1].session["remaining_s"] == pytest.approx(15 * 60 - 60, abs=0.2)
        drive.rest(10.2)
        finished = [t.finished_session for t in drive.ticks if t.finished_session is not None]
        assert len(finished) == 1
        assert finished[0]["client_id"] == "c7"
        assert finished[0]["status"] == "complete"
        assert finished[0]["distance_m"] == pytest.approx(60 * 2.0 / 3.6 + 0.1 * 0.5 / 3.6, abs=0.1)
        assert kinds(drive.events("client_cleared")) == ["client_cleared"]
        assert program.client_id is None
        assert program.stage_cap == 1
        assert [r.client_id for r in program.client_history("c7")] == ["c7"]


async def test_session_complete_is_requested_once_at_the_configured_length() -> None:
    config = TrainingConfig(session_length_min={1: 2.0}, session_warning_s=30, checkpoint_s=30)
    program = make(config)
    drive = Driver(program)
    async with running(program):
        drive.tick(core(kmh=2.0), 2.0)
        drive.run(89.8, core(kmh=2.0), 2.0)
        assert drive.events("session_guidance") == []
        drive.run(0.2, core(kmh=2.0), 2.0)
        assert len(drive.events("session_guidance")) == 1
        drive.run(29.8, core(kmh=2.0), 2.0)
        assert [t.request_stop for t in drive.ticks if t.request_stop] == []
        drive.run(0.2, core(kmh=2.0), 2.0)
        assert [t.request_stop for t in drive.ticks if t.request_stop] == ["session_complete"]
        # still running while the ramp-down starts: asked for once only
        drive.run(5, core(Mode.STOPPING, kmh=0.0, stop_reason="session_complete"), 1.0)
        drive.run(5, core(kmh=2.0), 2.0)
        assert [t.request_stop for t in drive.ticks if t.request_stop] == ["session_complete"]
        assert len(drive.events("session_complete")) == 1


async def test_no_session_limit_at_a_stage_without_one() -> None:
    program = make(TrainingConfig(session_length_min={1: 1.0}))
    drive = Driver(program)
    async with running(program):
        drive.run(120, core(stage=2, kmh=3.0), 3.0)  # stage 2 has no limit in this config
        assert [t.request_stop for t in drive.ticks if t.request_stop] == []
        assert drive.ticks[-1].session is not None
        assert drive.ticks[-1].session["remaining_s"] is None


# --------------------------------------------------------------------------- caps and clients


async def test_a_remote_assignment_never_raises_the_cap(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite3"
    seed(path, [], (ClientRecord("c3", 3, T0),))
    program = make(db_path=path)
    drive = Driver(program)
    async with running(program):
        event = program.assign_client("c3", belt_at_rest=True, source="mqtt")
        assert event.kind == "client_assigned"
        assert event.details["confirmed"] is False
        assert "until a trainer confirms" in event.message
        assert drive.rest(1)[-1].stage_cap == 1
        # assigning again remotely changes nothing
        program.assign_client("c3", belt_at_rest=True, source="mqtt")
        assert drive.rest(1)[-1].stage_cap == 1
        # the trainer action at the machine confirms the client (and unlocks nothing)
        tick = drive.tick(IDLE, 0.0, trainer_action=True)
        assert kinds(tick.events)[:1] == ["client_confirmed"]
        assert tick.stage_cap == 3
        assert program.unlocked_stage("c3") == 3


async def test_a_local_assignment_gives_the_clients_unlocked_stage(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite3"
    seed(path, [], (ClientRecord("c2", 2, T0),))
    program = make(db_path=path)
    drive = Driver(program)
    async with running(program):
        program.assign_client("c2", belt_at_rest=True, source="console")
        assert drive.rest(1)[-1].stage_cap == 2
        program.assign_client("new-client", belt_at_rest=True, source="console")
        assert drive.rest(1)[-1].stage_cap == 1  # unknown clients start at stage 1


async def test_assignment_is_refused_while_moving_and_for_bad_ids() -> None:
    program = make()
    async with running(program):
        moving = program.assign_client("c1", belt_at_rest=False, source="console")
        assert moving.kind == "client_refused"
        assert "at rest" in moving.message
        bad = program.assign_client("Jane Doe", belt_at_rest=True, source="console")
        assert bad.kind == "client_refused"
        assert "opaque id" in bad.message
        assert program.client_id is None


async def test_changing_client_at_rest_ends_the_open_session() -> None:
    program = make()
    drive = Driver(program)
    async with running(program):
        program.assign_client("a", belt_at_rest=True, source="console")
        drive.run(30, core(kmh=2.0), 2.0)
        drive.rest(2)
        program.assign_client("b", belt_at_rest=True, source="console")
        tick = drive.tick(IDLE, 0.0)
        assert "session_finished" in kinds(tick.events)
        assert tick.finished_session is not None
        assert tick.finished_session["client_id"] == "a"
        assert tick.finished_session["end_reason"] == "client_changed"
        assert program.client_id == "b"  # the new client stays assigned
        drive.run(5, core(kmh=2.0), 2.0)
        assert drive.ticks[-1].session is not None
        assert drive.ticks[-1].session["client_id"] == "b"


async def test_a_cap_is_raised_only_at_rest_but_lowered_at_once(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite3"
    seed(path, good_stage1("c1"))
    program = make(db_path=path)
    drive = Driver(program)
    async with running(program):
        program.assign_client("c1", belt_at_rest=True, source="console")
        tick = drive.tick(IDLE, 0.0, trainer_action=True)
        assert "stage_unlocked" in kinds(tick.events)
        assert tick.stage_cap == 2
        program.assign_client(None, belt_at_rest=True, source="console")
        assert drive.tick(IDLE, 0.0).stage_cap == 1


# --------------------------------------------------------------------------- unlocking


async def test_only_the_local_trainer_action_unlocks_once_criteria_are_met(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite3"
    seed(path, good_stage1("c1"))
    program = make(db_path=path)
    drive = Driver(program)
    async with running(program):
        program.assign_client("c1", belt_at_rest=True, source="console")
        drive.rest(5)
        assert program.unlock_status("c1").all_met
        assert drive.ticks[-1].stage_cap == 1  # criteria met, but nobody has acted
        assert drive.events("stage_unlocked") == []
        tick = drive.tick(IDLE, 0.0, trainer_action=True)
        (unlocked,) = [e for e in tick.events if e.kind == "stage_unlocked"]
        assert unlocked.details == {
            "client_id": "c1",
            "from_stage": 1,
            "to_stage": 2,
            "source": "trainer_key",
        }
        assert tick.stage_cap == 2
        await wait_until(lambda: program.storage_ok)
    _, clients = read_back(path)
    assert clients["c1"].unlocked_stage == 2
    store = SessionStore.open(path)
    (entry,) = store.unlock_log()
    store.close()
    assert (entry.client_id, entry.from_stage, entry.to_stage, entry.action) == (
        "c1",
        1,
        2,
        "unlock",
    )
    assert all(c["met"] for c in json.loads(entry.detail))


async def test_unlock_refused_lists_the_unmet_criteria(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite3"
    seed(path, good_stage1("c1", count=4))
    program = make(db_path=path)
    drive = Driver(program)
    async with running(program):
        program.assign_client("c1", belt_at_rest=True, source="console")
        tick = drive.tick(IDLE, 0.0, trainer_action=True)
        (refused,) = [e for e in tick.events if e.kind == "unlock_refused"]
        assert "stage 2 not unlocked" in refused.message
        assert "sessions at stage 1 (at least 5 min): 4, needs 6 (NOT met)" in refused.message
        criteria = json.loads(str(refused.details["criteria"]))
        assert [c["met"] for c in criteria] == [False, True, True]
        assert tick.stage_cap == 1
        assert program.unlocked_stage("c1") == 1


async def test_trainer_sign_off_stage_still_needs_the_action_with_auto_unlock(
    tmp_path: Path,
) -> None:
    path = tmp_path / "log.sqlite3"
    stage2 = [
        record(session_id=f"s{i}", start=T0 - days(10 - i), stage=2, continuous={3.5: 10.5})
        for i in range(5)
    ]
    seed(path, stage2, (ClientRecord("c1", 2, T0 - days(30)),))
    config = FAST.model_copy(update={"auto_unlock": True})
    program = make(config, db_path=path)
    drive = Driver(program)
    async with running(program):
        program.assign_client("c1", belt_at_rest=True, source="console")
        # the sixth session at stage 2, 11 min at 3.5 km/h, fault-free
        drive.run(11 * 60, core(stage=2, kmh=3.5), 3.5)
        drive.rest(11)
        assert drive.events("stage_unlocked") == []  # stage 3 needs the trainer's sign-off
        assert drive.events("client_cleared")
        program.assign_client("c1", belt_at_rest=True, source="console")
        tick = drive.tick(IDLE, 0.0, trainer_action=True)
        assert "stage_unlocked" in kinds(tick.events)
        assert program.unlocked_stage("c1") == 3


async def test_auto_unlock_without_sign_off_happens_at_session_end(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite3"
    seed(path, good_stage1("c1", count=5))
    config = FAST.model_copy(update={"auto_unlock": True})
    program = make(config, db_path=path)
    drive = Driver(program)
    async with running(program):
        program.assign_client("c1", belt_at_rest=True, source="console")
        drive.run(11 * 60, core(kmh=2.0), 2.0)
        drive.rest(11)
        (unlocked,) = drive.events("stage_unlocked")
        assert unlocked.details["source"] == "auto"
        assert program.unlocked_stage("c1") == 2


async def test_the_open_session_counts_towards_the_criteria(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite3"
    seed(path, good_stage1("c1", count=5))
    program = make(db_path=path)
    drive = Driver(program)
    async with running(program):
        program.assign_client("c1", belt_at_rest=True, source="console")
        drive.run(11 * 60, core(kmh=2.0), 2.0)
        drive.rest(3)  # stopped, the session is still open and the client assigned
        tick = drive.tick(IDLE, 0.0, trainer_action=True)
        assert "stage_unlocked" in kinds(tick.events)


async def test_trainer_action_refused_while_moving_or_without_a_client() -> None:
    program = make()
    drive = Driver(program)
    async with running(program):
        tick = drive.tick(IDLE, 0.0, trainer_action=True)
        assert "no client is assigned" in tick.events[0].message
        program.assign_client("c1", belt_at_rest=True, source="console")
        tick = drive.tick(core(kmh=2.0), 2.0, trainer_action=True)
        refused = [e for e in tick.events if e.kind == "unlock_refused"]
        assert "stop the belt first" in refused[0].message


async def test_trainer_action_refused_while_the_belt_creeps_with_the_sensor_at_zero() -> None:
    """IDLE and the speed sensor reads 0, but the firmware set-point still ramps down: the
    core says the belt is not at rest, and the program takes the core's word for it."""
    program = make()
    drive = Driver(program)
    async with running(program):
        program.assign_client("c1", belt_at_rest=True, source="console")
        tick = drive.tick(IDLE, 0.0, trainer_action=True, belt_at_rest=False)
        refused = [e for e in tick.events if e.kind == "unlock_refused"]
        assert "stop the belt first" in refused[0].message
        tick = drive.tick(IDLE, 0.0, trainer_action=True, belt_at_rest=True)
        assert all("stop the belt first" not in e.message for e in tick.events)


async def test_demotion_after_grip_stops(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite3"
    earlier = record(
        session_id="g1",
        start=T0 - days(2),
        stage=2,
        grip_stops=1,
        faults=("grip_lost",),
    )
    seed(path, [earlier], (ClientRecord("c1", 2, T0 - days(30)),))
    config = FAST.model_copy(update={"demote_after_grip_stops": 2})
    program = make(config, db_path=path)
    drive = Driver(program)
    async with running(program):
        program.assign_client("c1", belt_at_rest=True, source="console")
        drive.run(60, core(stage=2, kmh=3.0), 3.0)
        drive.run(3, core(Mode.FAULTED, stage=2, kmh=0.0, fault=FaultCode.GRIP_LOST), 0.0)
        drive.rest(11)
        (demoted,) = drive.events("demoted")
        assert demoted.details["to_stage"] == 1
        assert program.unlocked_stage("c1") == 1
        await wait_until(lambda: program.storage_ok)
    _, clients = read_back(path)
    assert clients["c1"].unlocked_stage == 1


# --------------------------------------------------------------------------- storage


async def test_sessions_are_checkpointed_while_open(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite3"
    program = make(db_path=path)
    drive = Driver(program)
    async with running(program):
        drive.run(5, core(kmh=2.0), 2.0)
        await wait_until(lambda: program.storage_ok)
        sessions, _ = read_back(path)
        (row,) = sessions
        assert row.status is SessionStatus.OPEN
        # checkpoints every checkpoint_s / 2: at most 0.5 s behind the last tick here
        assert row.moving_s >= 5.0 - 0.1 - 0.5
    sessions, _ = read_back(path)
    assert sessions[0].status is SessionStatus.COMPLETE
    assert sessions[0].end_reason is not None
    assert sessions[0].end_reason.value == "shutdown"


async def test_a_corrupt_log_keeps_the_program_running_in_memory(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite3"
    path.write_bytes(os.urandom(16384))
    before = digest(path)
    program = make(db_path=path)
    drive = Driver(program)
    async with running(program) as opened:
        (error,) = [e for e in opened if e.kind == "storage_error"]
        assert "not an SQLite database" in error.message
        assert error.details["error"] == "StoreCorruptError"
        program.assign_client("c1", belt_at_rest=True, source="console")
        drive.run(30, core(kmh=2.0), 2.0)
        drive.rest(11)
        assert drive.events("session_finished")
        assert [r.session_id for r in program.client_history("c1")]
        assert program.pending_writes >= 1  # held in memory
        assert program.stage_cap == 1
        # the trainer cannot unlock on an unreadable log
        program.assign_client("c1", belt_at_rest=True, source="console")
        tick = drive.tick(IDLE, 0.0, trainer_action=True)
        assert "session log has not been read" in tick.events[-1].message
        # the writer keeps retrying without reporting the same problem again
        failed = program.failed_writes
        await wait_until(lambda: program.failed_writes >= failed + 3)
        drive.rest(1)
        assert drive.events("storage_error") == []  # reported once, at open
    assert digest(path) == before
    assert sorted(p.name for p in os.scandir(tmp_path)) == ["log.sqlite3"]


async def test_a_locked_log_is_retried_and_nothing_is_lost(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite3"
    program = make(db_path=path)
    drive = Driver(program)
    async with running(program) as opened:
        assert opened == []
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
        try:
            drive.run(30, core(kmh=2.0), 2.0)
            drive.rest(11)
            await tick_until(drive, lambda: bool(drive.events("storage_error")))
            (error,) = drive.events("storage_error")
            assert error.details["error"] == "StoreLockedError"
            assert "locked by another process" in error.message
            assert program.pending_writes >= 1
            failed = program.failed_writes
            await wait_until(lambda: program.failed_writes >= failed + 2)  # retried
        finally:
            other.execute("ROLLBACK")
            other.close()
        await tick_until(drive, lambda: bool(drive.events("storage_recovered")))
        assert program.storage_ok
        sessions, _ = read_back(path)
        assert [r.status for r in sessions] == [SessionStatus.COMPLETE]
        assert sessions[0].moving_s == pytest.approx(30.0, abs=0.11)


async def test_a_log_locked_at_startup_is_opened_once_free(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite3"
    seed(path, [], (ClientRecord("c2", 2, T0),))
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    program = make(db_path=path)
    drive = Driver(program)
    async with running(program) as opened:
        assert [e.details["error"] for e in opened] == ["StoreLockedError"]
        program.assign_client("c2", belt_at_rest=True, source="console")
        assert drive.tick(IDLE, 0.0).stage_cap == 1  # stage unknown until the log is read
        other.execute("ROLLBACK")
        other.close()
        await tick_until(drive, lambda: bool(drive.events("storage_recovered")))
        assert drive.tick(IDLE, 0.0).stage_cap == 2


async def test_a_newer_schema_is_refused_at_open(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite3"
    with sqlite3.connect(path) as raw:
        raw.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        raw.execute("INSERT INTO schema_version VALUES (3)")
    raw.close()
    before = digest(path)
    program = make(db_path=path)
    with pytest.raises(StoreSchemaTooNewError, match=r"schema v3 is newer than this controller"):
        await program.open()
    await program.close()
    assert digest(path) == before


def test_a_config_that_does_not_fit_the_stage_table_is_refused() -> None:
    config = TrainingConfig.model_validate(
        {
            "unlock": [
                {
                    "stage": 2,
                    "sessions_at_previous": 6,
                    "continuous_min": 10,
                    "at_kmh": 2.5,
                    "over_last_sessions": 3,
                    "no_faults_in_last": 3,
                }
            ]
        }
    )
    with pytest.raises(ValueError, match=r"at_kmh 2.5 is above stage 1's max_kmh 2.0"):
        make(config)


async def test_disabled_program_records_nothing() -> None:
    program = make(TrainingConfig(enabled=False))
    drive = Driver(program)
    async with running(program):
        drive.run(30, core(kmh=2.0), 2.0)
        drive.rest(20)
        assert all(t.session is None and not t.events for t in drive.ticks)
        assert drive.ticks[-1].stage_cap == len(STAGES)
        assert program.assign_client("c1", belt_at_rest=True, source="console").kind == (
            "client_refused"
        )
