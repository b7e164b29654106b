"""The SQLite session log: migrations, checkpoints, refusal of damaged and newer files."""

from __future__ import annotations

import hashlib
import os
import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest

from controller.errors import (
    StoreCorruptError,
    StoreLockedError,
    StoreSchemaTooNewError,
    StoreUnavailableError,
)
from controller.training.sessions import EndReason, SessionStatus
from controller.training.store import (
    MIGRATIONS,
    SCHEMA_VERSION,
    ClientRecord,
    SessionStore,
    UnlockLogEntry,
)
from tests.training.helpers import T0, days, record


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_migrations_create_every_table_in_an_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite3"
    path.touch()  # an empty file is a valid, empty database
    store = SessionStore.open(path)
    assert store.schema_version == SCHEMA_VERSION == MIGRATIONS[-1].version
    assert store.sessions() == []
    assert store.clients() == {}
    assert store.unlock_log() == []
    store.close()
    with sqlite3.connect(path) as raw:
        tables = {
            row[0] for row in raw.execute("SELECT name FROM sqlite_master WHERE type='table'")
        }
        assert {"schema_version", "sessions", "clients", "unlock_log"} <= tables
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    raw.close()


def test_migrations_create_a_missing_file_and_reopen_without_change(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite3"
    SessionStore.open(path).close()
    store = SessionStore.open(path)
    assert store.schema_version == 1
    store.close()


def test_sessions_round_trip_and_checkpoints_upsert(tmp_path: Path) -> None:
    store = SessionStore.open(tmp_path / "log.sqlite3")
    first = replace(
        record(session_id="a", faults=("estop",), continuous={2.0: 11.0, 3.5: 1.5}),
        status=SessionStatus.OPEN,
        end_reason=None,
        stop_reasons=("session_complete",),
        checkpoint_utc=T0,
    )
    store.write(sessions=[first])
    assert store.sessions() == [first]
    later = replace(first, moving_s=900.0, distance_m=500.0)
    store.write(sessions=[later])
    assert store.sessions() == [later]
    done = replace(later, status=SessionStatus.COMPLETE, end_reason=EndReason.REST)
    store.write(sessions=[done])
    # a late checkpoint never reopens a closed session
    store.write(sessions=[later])
    assert store.sessions() == [done]
    store.close()


def test_clients_and_log_entries_are_written_once(tmp_path: Path) -> None:
    store = SessionStore.open(tmp_path / "log.sqlite3")
    entry = UnlockLogEntry("e1", T0, "c1", "tm1", 1, 2, "unlock", "trainer_key", "[]")
    store.write(clients=[ClientRecord("c1", 2, T0)], log=[entry])
    store.write(clients=[ClientRecord("c1", 2, T0)], log=[entry])  # a retried write
    assert store.clients() == {"c1": ClientRecord("c1", 2, T0)}
    assert store.unlock_log() == [entry]
    store.close()


def test_client_sessions_filter_by_client(tmp_path: Path) -> None:
    store = SessionStore.open(tmp_path / "log.sqlite3")
    a = record(session_id="a", client_id="c1", start=T0 + days(1))
    b = record(session_id="b", client_id="c2", start=T0)
    c = record(session_id="c", client_id=None, start=T0 + days(2))
    store.write(sessions=[a, b, c])
    assert [r.session_id for r in store.sessions()] == ["b", "a", "c"]
    assert store.client_sessions("c1") == [a]
    assert store.client_sessions(None) == [c]
    store.close()


def test_open_sessions_are_closed_as_interrupted(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite3"
    store = SessionStore.open(path)
    open_one = replace(record(session_id="a"), status=SessionStatus.OPEN, end_reason=None)
    store.write(sessions=[open_one, record(session_id="b", start=T0 + days(1))])
    store.close()
    store = SessionStore.open(path)
    (closed,) = store.close_interrupted()
    assert closed.session_id == "a"
    assert closed.status is SessionStatus.INTERRUPTED
    assert closed.end_reason is EndReason.POWER_LOSS
    assert [r.status for r in store.sessions()] == [
        SessionStatus.INTERRUPTED,
        SessionStatus.COMPLETE,
    ]
    assert store.close_interrupted() == []
    store.close()


def test_random_bytes_are_refused_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite3"
    path.write_bytes(os.urandom(8192))
    before = digest(path)
    with pytest.raises(StoreCorruptError, match=r"not an SQLite database.*was not changed"):
        SessionStore.open(path)
    assert digest(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.sqlite3"]


def test_damaged_pages_fail_the_integrity_check_and_are_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite3"
    store = SessionStore.open(path)
    store.write(sessions=[record(session_id=f"s{i}", start=T0 + days(i)) for i in range(200)])
    store.close()
    with sqlite3.connect(path) as raw:
        raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        raw.execute("PRAGMA journal_mode=DELETE")
    raw.close()
    data = bytearray(path.read_bytes())
    page_size = int.from_bytes(data[16:18], "big")
    for offset in range(2 * page_size, len(data), page_size):  # keep the header page
        data[offset + 100 : offset + 600] = os.urandom(500)
    path.write_bytes(bytes(data))
    before = digest(path)
    with pytest.raises(StoreCorruptError, match="was not changed"):
        SessionStore.open(path)
    assert digest(path) == before


def test_a_foreign_sqlite_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.sqlite3"
    with sqlite3.connect(path) as raw:
        raw.execute("CREATE TABLE recipes (name TEXT)")
    raw.close()
    before = digest(path)
    with pytest.raises(StoreCorruptError, match=r"not a session log.*\['recipes'\]"):
        SessionStore.open(path)
    assert digest(path) == before


def test_a_newer_schema_is_refused_with_the_versions(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite3"
    with sqlite3.connect(path) as raw:
        raw.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        raw.execute("INSERT INTO schema_version VALUES (3)")
    raw.close()
    before = digest(path)
    with pytest.raises(StoreSchemaTooNewError) as caught:
        SessionStore.open(path)
    assert str(caught.value).endswith(
        "database schema v3 is newer than this controller (v1): upgrade the controller; "
        "the file was not changed"
    )
    assert digest(path) == before


def test_a_missing_directory_is_reported(tmp_path: Path) -> None:
    with pytest.raises(StoreUnavailableError, match="does not exist"):
        SessionStore.open(tmp_path / "missing" / "log.sqlite3")


def test_read_only_open_needs_an_existing_file_and_never_creates_one(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite3"
    with pytest.raises(StoreUnavailableError, match="no session log"):
        SessionStore.open(path, read_only=True)
    assert not path.exists()


def test_a_write_while_another_process_holds_the_lock_is_reported_as_locked(
    tmp_path: Path,
) -> None:
    path = tmp_path / "log.sqlite3"
    store = SessionStore.open(path, busy_timeout_ms=50)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StoreLockedError, match="locked by another process"):
            store.write(sessions=[record(session_id="a")])
    finally:
        other.execute("ROLLBACK")
        other.close()
    store.write(sessions=[record(session_id="a")])
    assert [r.session_id for r in store.sessions()] == ["a"]
    store.close()
