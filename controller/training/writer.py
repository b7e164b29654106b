"""The session-log writer: a coalescing buffer written to SQLite on one thread, with backoff.

The training program hands finished and checkpointed sessions, client stage changes and unlock
log entries to :class:`SessionLogWriter`; nothing here blocks the control loop. The writer's
task (:meth:`SessionLogWriter.run`) opens the log, writes the buffer on one dedicated thread
and, when the database cannot be used (corrupt, locked, disk full), keeps the records in
memory and retries with backoff. Problems are reported once per distinct cause through
``report`` as ``storage_error`` / ``storage_recovered`` events; nothing queued is dropped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from controller.errors import (
    StoreCorruptError,
    StoreError,
    StoreLockedError,
    StoreSchemaTooNewError,
)
from controller.rules.model import Event
from controller.training.sessions import SessionRecord
from controller.training.store import ClientRecord, SessionStore, UnlockLogEntry

logger = logging.getLogger(__name__)

_T = TypeVar("_T")


@dataclass(frozen=True)
class LoadedLog:
    """What an open of the log read: clients, sessions and the sessions a crash cut off."""

    clients: dict[str, ClientRecord]
    sessions: list[SessionRecord]
    interrupted: list[SessionRecord]


class SessionLogWriter:
    """Writes the training program's records to the session log at ``db_path``.

    ``report`` receives the ``storage_error``/``storage_recovered`` events; ``on_loaded``
    receives what each successful open read (the program merges it with what it holds).
    """

    def __init__(
        self,
        db_path: Path,
        *,
        report: Callable[[Event], None],
        on_loaded: Callable[[LoadedLog], None],
        busy_timeout_ms: int = 2000,
        retry_initial_s: float = 1.0,
        retry_max_s: float = 60.0,
    ) -> None:
        self.db_path = db_path
        self._report = report
        self._on_loaded = on_loaded
        self._busy_timeout_ms = busy_timeout_ms
        self._retry_initial_s = retry_initial_s
        self._retry_max_s = retry_max_s
        # writes waiting (coalesced: one entry per session / client / log entry)
        self.pending_sessions: dict[str, SessionRecord] = {}
        self.pending_clients: dict[str, ClientRecord] = {}
        self.pending_log: dict[str, UnlockLogEntry] = {}
        self._wake = asyncio.Event()
        self._io_lock = asyncio.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._store: SessionStore | None = None
        self.store_error: str | None = None  # the problem last reported, None when writable
        self._last_error: StoreError | None = None
        self.failed_writes = 0  # attempts to open or write the log that failed (for telemetry)
        self._recovered = False  # sessions left open by a previous run have been closed

    # ------------------------------------------------------------------ the buffer

    @property
    def is_open(self) -> bool:
        return self._store is not None

    @property
    def pending_writes(self) -> int:
        return len(self.pending_sessions) + len(self.pending_clients) + len(self.pending_log)

    def has_pending(self) -> bool:
        return bool(self.pending_sessions or self.pending_clients or self.pending_log)

    def queue_session(self, record: SessionRecord) -> None:
        self.pending_sessions[record.session_id] = record
        self._wake.set()

    def queue_stage_change(self, client: ClientRecord, entry: UnlockLogEntry) -> None:
        self.pending_clients[client.client_id] = client
        self.pending_log[entry.entry_id] = entry
        self._wake.set()

    # ------------------------------------------------------------------ life cycle

    async def open(self) -> None:
        """First open at start-up. Raises :class:`StoreSchemaTooNewError` for a log written
        by a newer controller; any other problem is reported and retried by :meth:`run`."""
        async with self._io_lock:
            if not await self._open_store(refuse_newer=True):
                self._wake.set()  # the writer keeps trying with backoff

    async def run(self) -> None:
        """Write pending records until cancelled (the service runs this as a named task)."""
        delay_s = self._retry_initial_s
        while True:
            await self._wake.wait()
            self._wake.clear()
            while True:
                async with self._io_lock:
                    done = await self._flush_once()
                if done:
                    delay_s = self._retry_initial_s
                    break
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, self._retry_max_s)

    async def close(self, *, timeout_s: float) -> None:
        """Write what is pending for at most ``timeout_s``, log what is lost, close the log."""
        if self.has_pending():
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout_s
            delay_s = min(self._retry_initial_s, 0.5)
            while True:
                async with self._io_lock:
                    done = await self._flush_once()
                # a damaged or newer file will not get better within seconds: do not wait
                permanent = isinstance(self._last_error, StoreCorruptError | StoreSchemaTooNewError)
                if done or permanent or loop.time() + delay_s > deadline:
                    break
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, self._retry_max_s)
        if self.has_pending():
            logger.error(
                "session log %s: %d session(s) and %d stage change(s) could not be written "
                "before shutdown and are lost (%s)",
                self.db_path,
                len(self.pending_sessions),
                len(self.pending_clients) + len(self.pending_log),
                self.store_error,
            )
        async with self._io_lock:
            if self._store is not None:
                await self._call(self._store.close)
                self._store = None
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    # ------------------------------------------------------------------ the thread

    async def _call(self, function: Callable[[], _T]) -> _T:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="training-db")
        return await asyncio.get_running_loop().run_in_executor(self._executor, function)

    async def _open_store(self, *, refuse_newer: bool = False) -> bool:
        """Open the store and load it (caller holds the I/O lock). False on a StoreError.

        With ``refuse_newer`` a newer schema raises :class:`StoreSchemaTooNewError` (at
        startup); otherwise it is reported like any other storage error (the writer never
        takes the service down).
        """
        path = self.db_path
        try:
            store = await self._call(
                lambda: SessionStore.open(path, busy_timeout_ms=self._busy_timeout_ms)
            )
        except StoreError as exc:
            if refuse_newer and isinstance(exc, StoreSchemaTooNewError):
                raise
            self._report_error(exc)
            return False
        try:
            interrupted: list[SessionRecord] = []
            if not self._recovered:
                # only on the first open: later re-opens would close this run's own session
                interrupted = await self._call(store.close_interrupted)
            clients = await self._call(store.clients)
            sessions = await self._call(store.sessions)
        except StoreError as exc:
            await self._call(store.close)
            self._report_error(exc)
            return False
        self._store = store
        self._recovered = True
        self._on_loaded(LoadedLog(clients=clients, sessions=sessions, interrupted=interrupted))
        self._report_ok()
        logger.info(
            "session log %s open: %d session(s), %d client(s), %d interrupted session(s) closed",
            path,
            len(sessions),
            len(clients),
            len(interrupted),
        )
        return True

    async def _flush_once(self) -> bool:
        """Open the store if needed and write what is pending. True when all is written."""
        if self._store is None and not await self._open_store():
            return False
        store = self._store
        assert store is not None  # noqa: S101 -- set by _open_store
        sessions = dict(self.pending_sessions)
        clients = dict(self.pending_clients)
        log = dict(self.pending_log)
        if not (sessions or clients or log):
            return True
        try:
            await self._call(
                lambda: store.write(
                    sessions=list(sessions.values()),
                    clients=list(clients.values()),
                    log=list(log.values()),
                )
            )
        except StoreError as exc:
            self._report_error(exc)
            if not isinstance(exc, StoreLockedError):
                # the file may have been replaced or the disk remounted: open it afresh next time
                self._store = None
                await self._call(store.close)
            return False
        # drop what was written, unless it changed while the write ran
        for key, record in sessions.items():
            if self.pending_sessions.get(key) is record:
                del self.pending_sessions[key]
        for key, client in clients.items():
            if self.pending_clients.get(key) is client:
                del self.pending_clients[key]
        for key in log:
            self.pending_log.pop(key, None)
        self._report_ok()
        return not self.has_pending()

    # ------------------------------------------------------------------ reports

    def _report_error(self, exc: StoreError) -> None:
        self.failed_writes += 1
        self._last_error = exc
        message = str(exc)
        if message == self.store_error:
            return  # reported once per distinct problem, not at every retry
        self.store_error = message
        logger.warning("%s", message)
        self._report(
            Event(
                "storage_error",
                f"{message}; {len(self.pending_sessions)} session record(s) held in memory",
                {
                    "error": type(exc).__name__,
                    "path": str(self.db_path),
                    "pending": self.pending_writes,
                },
            )
        )

    def _report_ok(self) -> None:
        if self.store_error is None:
            return
        self.store_error = None
        self._last_error = None
        logger.info("session log %s is writable again", self.db_path)
        self._report(
            Event(
                "storage_recovered",
                f"session log {self.db_path} is available again; held sessions written",
                {"path": str(self.db_path)},
            )
        )
