"""The session log: one SQLite file (stdlib ``sqlite3``) under the state directory.

* WAL journal, ``synchronous=FULL``: a committed checkpoint survives a power cut.
* Schema version in the table ``schema_version``; :data:`MIGRATIONS` brings an older file up to
  :data:`SCHEMA_VERSION` one step at a time, each step in its own transaction. A v2 appends a
  :class:`Migration` to the tuple.
* The file is never deleted, truncated or rewritten by this module. A file that is not an
  SQLite database or fails ``PRAGMA quick_check`` raises :class:`StoreCorruptError`, and a file
  with a newer schema raises :class:`StoreSchemaTooNewError`, before anything is written.
* Blocking: every method does file I/O. :class:`~controller.training.program.TrainingProgram`
  calls them on its own writer thread, never on the event loop.

Tables (v1):

* ``sessions``: one row per session, upserted at every checkpoint (status ``open``) and at the
  end (``complete``); rows left ``open`` by a power cut become ``interrupted`` on the next start.
* ``clients``: ``client_id`` (opaque), ``unlocked_stage``, ``updated_utc`` (when the stage last
  changed).
* ``unlock_log``: every unlock and demotion, with the criteria as JSON.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from controller.errors import (
    StoreCorruptError,
    StoreError,
    StoreLockedError,
    StoreSchemaTooNewError,
    StoreUnavailableError,
)
from controller.training.sessions import EndReason, SessionRecord, SessionStatus, interrupted

SCHEMA_VERSION = 1
_T = TypeVar("_T")
SQLITE_HEADER = b"SQLite format 3\x00"


@dataclass(frozen=True)
class ClientRecord:
    client_id: str
    unlocked_stage: int
    updated_utc: datetime  # when the unlocked stage last changed (or the client was created)


@dataclass(frozen=True)
class UnlockLogEntry:
    """One change of a client's unlocked stage."""

    entry_id: str  # unique: a retried write never logs an entry twice
    utc: datetime
    client_id: str
    treadmill_id: str
    from_stage: int
    to_stage: int
    action: str  # "unlock" or "demote"
    source: str  # "trainer_key", "buttons", "auto", "rule", ...
    detail: str  # JSON: the criteria or the demotion reason


@dataclass(frozen=True)
class Migration:
    """One schema step: run ``statements`` on a file at ``version - 1`` to reach ``version``."""

    version: int
    description: str
    statements: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        version=1,
        description="sessions, clients and unlock_log",
        statements=(
            """
            CREATE TABLE sessions (
                session_id TEXT PRIMARY KEY,
                treadmill_id TEXT NOT NULL,
                client_id TEXT,
                status TEXT NOT NULL CHECK (status IN ('open', 'complete', 'interrupted')),
                end_reason TEXT,
                start_utc TEXT NOT NULL,
                end_utc TEXT NOT NULL,
                duration_s REAL NOT NULL,
                moving_s REAL NOT NULL,
                distance_m REAL NOT NULL,
                max_kmh REAL NOT NULL,
                stage_cap INTEGER NOT NULL,
                highest_stage INTEGER NOT NULL,
                stage_s TEXT NOT NULL,
                continuous_s_at_kmh TEXT NOT NULL,
                grip_losses INTEGER NOT NULL,
                grip_stops INTEGER NOT NULL,
                grip_warnings INTEGER NOT NULL,
                faults TEXT NOT NULL,
                stop_reasons TEXT NOT NULL,
                checkpoint_utc TEXT
            )
            """,
            "CREATE INDEX sessions_by_client ON sessions (client_id, start_utc)",
            "CREATE INDEX sessions_by_status ON sessions (status)",
            """
            CREATE TABLE clients (
                client_id TEXT PRIMARY KEY,
                unlocked_stage INTEGER NOT NULL CHECK (unlocked_stage >= 1),
                updated_utc TEXT NOT NULL
            )
            """,
            """
            CREATE TABLE unlock_log (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                entry_id TEXT NOT NULL UNIQUE,
                utc TEXT NOT NULL,
                client_id TEXT NOT NULL,
                treadmill_id TEXT NOT NULL,
                from_stage INTEGER NOT NULL,
                to_stage INTEGER NOT NULL,
                action TEXT NOT NULL CHECK (action IN ('unlock', 'demote')),
                source TEXT NOT NULL,
                detail TEXT NOT NULL
            )
            """,
        ),
    ),
)


def classify(exc: sqlite3.Error, path: Path, doing: str) -> StoreError:
    """Map an sqlite3 error to a :class:`StoreError` subclass with a message that helps."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    text = str(exc)
    where = f"session log {path}"
    if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")) or "malformed" in text:
        return StoreCorruptError(
            f"{where} is damaged ({text}) while {doing}; the file was not changed: move it "
            "aside (or restore a backup) and restart to start a new log"
        )
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "locked" in text:
        return StoreLockedError(
            f"{where} is locked by another process ({text}) while {doing}; stop the other "
            "program using it (only the controller should write it); retrying"
        )
    if name.startswith("SQLITE_FULL") or "disk is full" in text:
        return StoreUnavailableError(
            f"{where}: the disk is full while {doing}; free space on the state directory's "
            "file system; sessions are kept in memory and retried"
        )
    return StoreUnavailableError(
        f"{where} cannot be used while {doing}: {text} ({name or type(exc).__name__}); check "
        "that the state directory exists, is writable and the storage is healthy"
    )


def check_header(path: Path) -> None:
    """Refuse a non-empty file that does not start with the SQLite header (reads only)."""
    try:
        with path.open("rb") as handle:
            head = handle.read(len(SQLITE_HEADER))
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StoreUnavailableError(f"session log {path} cannot be read: {exc}") from exc
    if head and head != SQLITE_HEADER:
        raise StoreCorruptError(
            f"session log {path} is not an SQLite database (it starts with {head[:8]!r}, "
            f"expected {SQLITE_HEADER[:15]!r}); the file was not changed: move it aside (or "
            "restore a backup) and restart to start a new log"
        )


class SessionStore:
    """An open session log. Not thread-safe: use it from one thread at a time."""

    def __init__(self, connection: sqlite3.Connection, path: Path, *, read_only: bool) -> None:
        self._db = connection
        self.path = path
        self.read_only = read_only

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(
        cls, path: Path, *, busy_timeout_ms: int = 2000, read_only: bool = False
    ) -> SessionStore:
        """Open (and if needed create and migrate) the log at ``path``.

        Raises :class:`StoreCorruptError`, :class:`StoreLockedError`,
        :class:`StoreUnavailableError` or :class:`StoreSchemaTooNewError`; in each case nothing
        has been written to the file.
        ``read_only`` never creates, migrates or writes (for ``treadmill history``).
        """
        path = Path(path)
        check_header(path)
        if read_only and not path.exists():
            raise StoreUnavailableError(
                f"no session log at {path}: check --db/--config (the controller creates it "
                "when it first starts)"
            )
        if not read_only and not path.parent.is_dir():
            raise StoreUnavailableError(
                f"session log directory {path.parent} does not exist: create the state "
                "directory (systemd StateDirectory=) or fix state_dir in the config"
            )
        try:
            if read_only:
                connection = sqlite3.connect(
                    f"{path.resolve().as_uri()}?mode=ro",
                    uri=True,
                    timeout=busy_timeout_ms / 1000,
                    isolation_level=None,
                )
            else:
                connection = sqlite3.connect(
                    path, timeout=busy_timeout_ms / 1000, isolation_level=None
                )
        except sqlite3.Error as exc:
            raise classify(exc, path, "opening it") from exc
        store = cls(connection, path, read_only=read_only)
        try:
            store._check_and_prepare()
        except BaseException:
            connection.close()
            raise
        return store

    def _check_and_prepare(self) -> None:
        try:
            version = self._read_version()
        except sqlite3.Error as exc:
            raise classify(exc, self.path, "reading its schema version") from exc
        if version == 0:
            try:
                tables = [
                    row[0]
                    for row in self._db.execute(
                        "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
                    ).fetchall()
                ]
            except sqlite3.Error as exc:
                raise classify(exc, self.path, "listing its tables") from exc
            if tables:
                raise StoreCorruptError(
                    f"session log {self.path} is an SQLite database but not a session log (it "
                    f"has tables {tables[:5]} and no schema_version); the file was not changed: "
                    "point db_file at another file name or move this one aside"
                )
        if version > SCHEMA_VERSION:
            raise StoreSchemaTooNewError(
                f"session log {self.path}: database schema v{version} is newer than this "
                f"controller (v{SCHEMA_VERSION}): upgrade the controller; the file was not "
                "changed"
            )
        try:
            result = self._db.execute("PRAGMA quick_check").fetchall()
        except sqlite3.Error as exc:
            raise classify(exc, self.path, "checking its integrity") from exc
        if [tuple(row) for row in result] != [("ok",)]:
            found = "; ".join(str(row[0]) for row in result[:3])
            raise StoreCorruptError(
                f"session log {self.path} failed its integrity check ({found}); the file was "
                "not changed: move it aside (or restore a backup) and restart to start a new log"
            )
        if self.read_only:
            return
        try:
            self._db.execute("PRAGMA journal_mode=WAL").fetchall()
            self._db.execute("PRAGMA synchronous=FULL")
            self._migrate(version)
        except sqlite3.Error as exc:
            raise classify(exc, self.path, "preparing it") from exc

    def _read_version(self) -> int:
        row = self._db.execute(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
        ).fetchone()
        if row is None or row[0] == 0:
            return 0
        version_row = self._db.execute("SELECT max(version) FROM schema_version").fetchone()
        return int(version_row[0]) if version_row and version_row[0] is not None else 0

    def _migrate(self, from_version: int) -> None:
        for migration in MIGRATIONS:
            if migration.version <= from_version:
                continue
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if migration.version == 1:
                    self._db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
                for statement in migration.statements:
                    self._db.execute(statement)
                self._db.execute("DELETE FROM schema_version")
                self._db.execute(
                    "INSERT INTO schema_version (version) VALUES (?)", (migration.version,)
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    @property
    def schema_version(self) -> int:
        return self._guard(self._read_version, "reading its schema version")

    def close(self) -> None:
        """Close the connection; errors on close are ignored (there is nothing left to save)."""
        try:
            self._db.close()
        except sqlite3.Error:
            return

    # ------------------------------------------------------------------ writing

    def write(
        self,
        *,
        sessions: Sequence[SessionRecord] = (),
        clients: Sequence[ClientRecord] = (),
        log: Sequence[UnlockLogEntry] = (),
    ) -> None:
        """Write sessions (upsert), client stages and log entries in one transaction.

        A checkpoint (status ``open``) never overwrites a row that is already closed.
        """

        def run() -> None:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(_UPSERT_SESSION, [_session_row(r) for r in sessions])
                self._db.executemany(
                    "INSERT INTO clients (client_id, unlocked_stage, updated_utc) "
                    "VALUES (?, ?, ?) ON CONFLICT (client_id) DO UPDATE SET "
                    "unlocked_stage = excluded.unlocked_stage, updated_utc = excluded.updated_utc",
                    [(c.client_id, c.unlocked_stage, _utc(c.updated_utc)) for c in clients],
                )
                self._db.executemany(
                    "INSERT OR IGNORE INTO unlock_log (entry_id, utc, client_id, treadmill_id, "
                    "from_stage, to_stage, action, source, detail) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        (
                            e.entry_id,
                            _utc(e.utc),
                            e.client_id,
                            e.treadmill_id,
                            e.from_stage,
                            e.to_stage,
                            e.action,
                            e.source,
                            e.detail,
                        )
                        for e in log
                    ],
                )
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

        self._guard(run, "writing sessions")

    def close_interrupted(self) -> list[SessionRecord]:
        """Mark every session left ``open`` (power cut, crash) as ``interrupted``.

        Each keeps its last checkpoint: that is all that is known about it. Returns them.
        """

        def run() -> list[SessionRecord]:
            rows = self._db.execute(
                _SELECT_SESSIONS + " WHERE status = 'open' ORDER BY start_utc"
            ).fetchall()
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "UPDATE sessions SET status = 'interrupted', end_reason = ? "
                    "WHERE status = 'open'",
                    (EndReason.POWER_LOSS.value,),
                )
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
            return [interrupted(_record_from_row(row)) for row in rows]

        return self._guard(run, "closing interrupted sessions")

    # ------------------------------------------------------------------ reading

    def sessions(self) -> list[SessionRecord]:
        """Every session, in start order."""

        def run() -> list[SessionRecord]:
            rows = self._db.execute(_SELECT_SESSIONS + " ORDER BY start_utc, session_id").fetchall()
            return [_record_from_row(row) for row in rows]

        return self._guard(run, "reading sessions")

    def client_sessions(self, client_id: str | None) -> list[SessionRecord]:
        """One client's sessions in start order (None: sessions without a client)."""

        def run() -> list[SessionRecord]:
            rows = self._db.execute(
                _SELECT_SESSIONS + " WHERE client_id IS ? ORDER BY start_utc, session_id",
                (client_id,),
            ).fetchall()
            return [_record_from_row(row) for row in rows]

        return self._guard(run, "reading sessions")

    def clients(self) -> dict[str, ClientRecord]:
        def run() -> dict[str, ClientRecord]:
            rows = self._db.execute(
                "SELECT client_id, unlocked_stage, updated_utc FROM clients ORDER BY client_id"
            ).fetchall()
            return {
                row[0]: ClientRecord(row[0], int(row[1]), datetime.fromisoformat(row[2]))
                for row in rows
            }

        return self._guard(run, "reading clients")

    def unlock_log(self) -> list[UnlockLogEntry]:
        def run() -> list[UnlockLogEntry]:
            rows = self._db.execute(
                "SELECT entry_id, utc, client_id, treadmill_id, from_stage, to_stage, action, "
                "source, detail FROM unlock_log ORDER BY id"
            ).fetchall()
            return [
                UnlockLogEntry(
                    entry_id=row[0],
                    utc=datetime.fromisoformat(row[1]),
                    client_id=row[2],
                    treadmill_id=row[3],
                    from_stage=int(row[4]),
                    to_stage=int(row[5]),
                    action=row[6],
                    source=row[7],
                    detail=row[8],
                )
                for row in rows
            ]

        return self._guard(run, "reading the unlock log")

    def _guard(self, run: Callable[[], _T], doing: str) -> _T:
        try:
            return run()
        except sqlite3.Error as exc:
            raise classify(exc, self.path, doing) from exc


# ---------------------------------------------------------------------- row mapping

_FIELDS = (
    "session_id",
    "treadmill_id",
    "client_id",
    "status",
    "end_reason",
    "start_utc",
    "end_utc",
    "duration_s",
    "moving_s",
    "distance_m",
    "max_kmh",
    "stage_cap",
    "highest_stage",
    "stage_s",
    "continuous_s_at_kmh",
    "grip_losses",
    "grip_stops",
    "grip_warnings",
    "faults",
    "stop_reasons",
    "checkpoint_utc",
)
_COLUMNS = ", ".join(_FIELDS)
# The SQL below is assembled from the constant column names above only; every value is bound.
_SELECT_SESSIONS = f"SELECT {_COLUMNS} FROM sessions"  # noqa: S608 -- constant column names
_PLACEHOLDERS = ", ".join("?" for _ in _FIELDS)
_UPDATES = ", ".join(f"{name} = excluded.{name}" for name in _FIELDS[1:])
_UPSERT_SESSION = (
    f"INSERT INTO sessions ({_COLUMNS}) VALUES ({_PLACEHOLDERS}) "  # noqa: S608 -- constants only
    f"ON CONFLICT (session_id) DO UPDATE SET {_UPDATES} "
    "WHERE sessions.status = 'open' OR excluded.status <> 'open'"
)


def _utc(moment: datetime) -> str:
    return moment.isoformat(timespec="microseconds")


def _session_row(record: SessionRecord) -> tuple[Any, ...]:
    return (
        record.session_id,
        record.treadmill_id,
        record.client_id,
        record.status.value,
        None if record.end_reason is None else record.end_reason.value,
        _utc(record.start_utc),
        _utc(record.end_utc),
        record.duration_s,
        record.moving_s,
        record.distance_m,
        record.max_kmh,
        record.stage_cap,
        record.highest_stage,
        json.dumps([[stage, seconds] for stage, seconds in record.stage_s]),
        json.dumps([[kmh, seconds] for kmh, seconds in record.continuous_s_at_kmh]),
        record.grip_losses,
        record.grip_stops,
        record.grip_warnings,
        json.dumps(list(record.faults)),
        json.dumps(list(record.stop_reasons)),
        None if record.checkpoint_utc is None else _utc(record.checkpoint_utc),
    )


def _pairs(text: str) -> Iterable[tuple[float, float]]:
    for key, value in json.loads(text):
        yield float(key), float(value)


def _record_from_row(row: Sequence[Any]) -> SessionRecord:
    values = dict(zip(_FIELDS, row, strict=True))
    return SessionRecord(
        session_id=values["session_id"],
        treadmill_id=values["treadmill_id"],
        client_id=values["client_id"],
        status=SessionStatus(values["status"]),
        end_reason=None if values["end_reason"] is None else EndReason(values["end_reason"]),
        start_utc=datetime.fromisoformat(values["start_utc"]),
        end_utc=datetime.fromisoformat(values["end_utc"]),
        duration_s=float(values["duration_s"]),
        moving_s=float(values["moving_s"]),
        distance_m=float(values["distance_m"]),
        max_kmh=float(values["max_kmh"]),
        stage_cap=int(values["stage_cap"]),
        highest_stage=int(values["highest_stage"]),
        stage_s=tuple((int(stage), seconds) for stage, seconds in _pairs(values["stage_s"])),
        continuous_s_at_kmh=tuple(_pairs(values["continuous_s_at_kmh"])),
        grip_losses=int(values["grip_losses"]),
        grip_stops=int(values["grip_stops"]),
        grip_warnings=int(values["grip_warnings"]),
        faults=tuple(json.loads(values["faults"])),
        stop_reasons=tuple(json.loads(values["stop_reasons"])),
        checkpoint_utc=None
        if values["checkpoint_utc"] is None
        else datetime.fromisoformat(values["checkpoint_utc"]),
    )
