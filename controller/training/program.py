"""The training program as the service uses it: sessions, clients, stage caps, the session log.

:meth:`TrainingProgram.on_tick` runs inside the control loop and never blocks: it does the
pure bookkeeping (:mod:`.sessions`, :mod:`.progression`) and leaves writes in a coalescing
buffer. :meth:`TrainingProgram.run_writer` (a task the service owns) runs the
:class:`~controller.training.writer.SessionLogWriter`, which writes that buffer to SQLite on
one dedicated thread. When the database cannot be used (corrupt, locked, disk full)
the program keeps running: sessions are held in memory and retried with backoff, the problem is
reported as an ``Event(kind="storage_error")``, and nothing already recorded is dropped.

Safety rules this module keeps (see ``docs/training.md``):

* The stage cap is the assigned client's unlocked stage; 1 without a client, without a locally
  confirmed client, and while the session log has not been read.
* A cap is lowered at once, but raised only with the belt at rest.
* A stage is unlocked only by the local trainer action (``trainer_action=True``), with the
  belt at rest, once every criterion is met. No remote message can unlock a stage or raise a
  cap: a client assigned remotely (``source="mqtt"``) runs at stage 1 until a trainer confirms
  the assignment at the machine with the trainer action.
* The open session is written at least every ``checkpoint_s / 2`` so that, with a write taking
  less than that, a power cut loses at most ``checkpoint_s`` of it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from controller.rules.model import CoreState, Event, Mode, StageConfig
from controller.training import events as ev
from controller.training.config import CLIENT_ID_PATTERN, TrainingConfig, check_against_stages
from controller.training.progression import (
    UnlockStatus,
    counted,
    demotion_due,
    unlock_status,
)
from controller.training.sessions import (
    EndReason,
    SessionProgress,
    SessionRecord,
    SessionTracker,
)
from controller.training.store import ClientRecord, UnlockLogEntry
from controller.training.writer import LoadedLog, SessionLogWriter

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

#: Assignment sources that count as local (at the machine). Anything else is remote.
LOCAL_SOURCES = frozenset({"console"})


@dataclass(frozen=True)
class TrainingTick:
    """What the training program asks of the service after one control tick.

    * ``stage_cap``: put into ``Inputs.stage_cap`` for the next core tick.
    * ``request_stop``: ``"session_complete"`` on the one tick the session length at the
      current stage is reached while running; the service passes it as ``RequestStop``.
    * ``events``: publish and log them like the core's events.
    * ``session``: telemetry for the open session (None when none is open).
    * ``finished_session``: a JSON-ready finished session for the MQTT ``session`` topic.
    """

    stage_cap: int
    request_stop: str | None = None
    events: tuple[Event, ...] = ()
    session: dict[str, Any] | None = None
    finished_session: dict[str, Any] | None = None


class TrainingProgram:
    """Sessions, clients and progression for one treadmill. See the module docstring.

    ``db_path`` None keeps everything in memory (no log); ``new_id`` makes session and log ids.
    ``busy_timeout_ms``, ``retry_initial_s`` and ``retry_max_s`` tune the writer's patience.
    """

    def __init__(
        self,
        config: TrainingConfig,
        stages: Sequence[StageConfig],
        *,
        treadmill_id: str,
        db_path: Path | None,
        standstill_kmh: float = 0.1,
        new_id: Callable[[], str] = lambda: uuid.uuid4().hex,
        busy_timeout_ms: int = 2000,
        retry_initial_s: float = 1.0,
        retry_max_s: float = 60.0,
    ) -> None:
        problems = check_against_stages(config, stages)
        if problems:
            raise ValueError("training config does not fit the stage table: " + "; ".join(problems))
        if not stages:
            raise ValueError("the stage table is empty: the training program needs stage 1")
        self._config = config
        self._max_stage = len(stages)
        self._treadmill_id = treadmill_id
        self._db_path = db_path
        self._standstill_kmh = standstill_kmh
        self._new_id = new_id
        thresholds = {rule.at_kmh for rule in config.unlock} | {s.max_kmh for s in stages}
        self._tracker = SessionTracker(
            treadmill_id=treadmill_id,
            session_end_rest_s=config.session_end_rest_s,
            standstill_kmh=standstill_kmh,
            thresholds_kmh=thresholds,
            at_speed_tolerance_kmh=config.at_speed_tolerance_kmh,
            new_id=new_id,
        )
        self._checkpoint_ms = max(round(config.checkpoint_s * 1000 / 2), 1)
        self._last_checkpoint_ms = 0

        # clients and history (the store's contents once loaded, plus this run's sessions)
        self._client_id: str | None = None
        self._client_confirmed = False
        self._clients: dict[str, ClientRecord] = {}
        self._history: dict[str | None, list[SessionRecord]] = {}
        self._loaded = db_path is None  # in-memory mode has nothing to load
        self._cap = 1

        # the open session's guidance state
        self._stop_requested = False
        self._warned = False

        # last tick, for actions between ticks (assign_client, close)
        self._last_now_ms: int | None = None
        self._last_utc: datetime | None = None
        self._last_measured_kmh: float | None = None
        self._last_mode: Mode | None = None
        self._belt_at_rest = False

        self._outbox: list[Event] = []  # events raised off-tick, delivered with the next tick
        self._finished_out: deque[dict[str, Any]] = deque()
        self._closed = False
        # the session log (None: in memory only)
        self._writer: SessionLogWriter | None = None
        if db_path is not None and config.enabled:
            self._writer = SessionLogWriter(
                db_path,
                report=self._report,
                on_loaded=self._merge_log,
                busy_timeout_ms=busy_timeout_ms,
                retry_initial_s=retry_initial_s,
                retry_max_s=retry_max_s,
            )

    # ------------------------------------------------------------------ properties

    @property
    def stage_cap(self) -> int:
        return self._cap

    @property
    def client_id(self) -> str | None:
        return self._client_id

    @property
    def storage_ok(self) -> bool:
        """True when the log is open and nothing is waiting to be written."""
        writer = self._writer
        return writer is not None and writer.is_open and not writer.has_pending()

    @property
    def pending_writes(self) -> int:
        return 0 if self._writer is None else self._writer.pending_writes

    @property
    def failed_writes(self) -> int:
        """Attempts to open or write the log that failed (for telemetry)."""
        return 0 if self._writer is None else self._writer.failed_writes

    def progress(self) -> SessionProgress | None:
        """The open session's figures as of the last tick (None when no session is open)."""
        if self._last_now_ms is None:
            return None
        return self._tracker.progress(self._last_now_ms)

    def unlocked_stage(self, client_id: str) -> int:
        record = self._clients.get(client_id)
        return 1 if record is None else min(record.unlocked_stage, self._max_stage)

    def client_history(self, client_id: str | None) -> list[SessionRecord]:
        return list(self._history.get(client_id, ()))

    def unlock_status(self, client_id: str) -> UnlockStatus:
        """Where ``client_id`` stands towards the next stage (includes the open session)."""
        history = self.client_history(client_id)
        if self._last_now_ms is not None and self._last_utc is not None:
            snapshot = self._tracker.snapshot(self._last_now_ms, self._last_utc)
            if snapshot is not None and snapshot.client_id == client_id:
                history.append(snapshot)
        return unlock_status(
            history, self.unlocked_stage(client_id), self._config, max_stage=self._max_stage
        )

    # ------------------------------------------------------------------ life cycle

    async def open(self) -> list[Event]:
        """Open the session log off the loop and load clients and history.

        Returns events (``storage_error``, ``session_interrupted``). A corrupt, locked or
        unwritable log does not raise: the program runs in memory and the writer keeps trying.
        Raises :class:`StoreSchemaTooNewError` for a log written by a newer controller: that
        cannot fix itself, and running on would silently keep every session out of the log.
        """
        if self._writer is None:
            self._loaded = True
            return []
        await self._writer.open()
        return self._take_outbox()

    async def run_writer(self) -> None:
        """Write pending sessions until cancelled. The service runs this as a named task."""
        if self._writer is None:
            await asyncio.Event().wait()  # nothing to write, ever; wait to be cancelled
        else:
            await self._writer.run()

    async def close(self, *, timeout_s: float = 5.0) -> None:
        """Finish the open session (end reason ``shutdown``) and write what is pending.

        Tries for at most ``timeout_s``; what cannot be written then is logged as lost.
        """
        if self._closed:
            return
        self._closed = True
        if self._last_now_ms is not None and self._last_utc is not None:
            record = self._tracker.finish(self._last_now_ms, self._last_utc, EndReason.SHUTDOWN)
            if record is not None:
                self._remember(record)
                self._queue_session(record)
        if self._writer is not None:
            await self._writer.close(timeout_s=timeout_s)

    # ------------------------------------------------------------------ control tick

    def on_tick(
        self,
        *,
        now_ms: int,
        utc: datetime,
        core: CoreState,
        measured_kmh: float | None,
        belt_at_rest: bool,
        events: tuple[Event, ...],
        trainer_action: bool,
    ) -> TrainingTick:
        """One control tick: track the session, checkpoint it, guide it, handle the trainer.

        ``belt_at_rest`` is the core's verdict (``Decision.belt_at_rest``): the trainer
        action and a higher stage cap need it; this program does not judge rest itself.
        """
        self._belt_at_rest = belt_at_rest
        self._last_now_ms = now_ms
        self._last_utc = utc
        self._last_measured_kmh = measured_kmh
        self._last_mode = core.mode
        if not self._config.enabled:
            return TrainingTick(stage_cap=self._max_stage, events=tuple(self._take_outbox()))

        out = self._take_outbox()
        self._track_session(now_ms, utc, core, measured_kmh, events, out)
        request_stop: str | None = None
        session_json: dict[str, Any] | None = None
        progress = self._tracker.progress(now_ms)
        if progress is not None:
            request_stop, remaining_s = self._guide(progress, core, out)
            session_json = {
                "session_id": progress.session_id,
                "client_id": progress.client_id,
                "elapsed_s": round(progress.elapsed_s, 1),
                "moving_s": round(progress.moving_s, 1),
                "distance_m": round(progress.distance_m, 1),
                "remaining_s": None if remaining_s is None else round(remaining_s, 1),
                "stage_cap": self._cap,
            }

        if trainer_action:
            out.append(self._trainer_action(utc, core, measured_kmh))
        self._update_cap(core, measured_kmh, out)
        if session_json is not None:
            session_json["stage_cap"] = self._cap
        finished = self._finished_out.popleft() if self._finished_out else None
        return TrainingTick(
            stage_cap=self._cap,
            request_stop=request_stop,
            events=tuple(out),
            session=session_json,
            finished_session=finished,
        )

    def _track_session(  # noqa: PLR0917 -- the tick's inputs, passed on to the tracker
        self,
        now_ms: int,
        utc: datetime,
        core: CoreState,
        measured_kmh: float | None,
        events: tuple[Event, ...],
        out: list[Event],
    ) -> None:
        """Start, checkpoint and finish sessions from the tick (see :mod:`.sessions`)."""
        update = self._tracker.update(
            now_ms=now_ms,
            utc=utc,
            core=core,
            measured_kmh=measured_kmh,
            events=events,
            client_id=self._client_id,
            stage_cap=self._cap,
        )
        if update.started is not None:
            self._stop_requested = False
            self._warned = False
            self._last_checkpoint_ms = now_ms
            self._queue_session(update.started)
            out.append(
                ev.session_started(update.started.session_id, update.started.client_id, self._cap)
            )
            logger.info("session %s started", update.started.session_id)
        if update.finished is not None:
            out.extend(self._session_finished(update.finished, utc, clear_client=True))
        elif self._tracker.is_open and now_ms - self._last_checkpoint_ms >= self._checkpoint_ms:
            snapshot = self._tracker.snapshot(now_ms, utc)
            if snapshot is not None:
                self._last_checkpoint_ms = now_ms
                self._queue_session(snapshot)

    def _guide(
        self, progress: SessionProgress, core: CoreState, out: list[Event]
    ) -> tuple[str | None, float | None]:
        """Warn before the session length at this stage is reached, and ask for a stop when it
        is (once each per session). Returns the stop request and the time left (seconds)."""
        limit_s = self._config.session_length_s(core.stage)
        remaining_s = None if limit_s is None else max(limit_s - progress.moving_s, 0.0)
        if remaining_s is None or core.mode is not Mode.RUNNING:
            return None, remaining_s
        warn_s = self._config.session_warning_s
        if not self._warned and warn_s > 0 and remaining_s <= warn_s:
            self._warned = True
            out.append(ev.session_guidance(progress.session_id, remaining_s, core.stage))
        if self._stop_requested or remaining_s > 0:
            return None, remaining_s
        self._stop_requested = True
        out.append(ev.session_complete(progress.session_id, progress.moving_s, core.stage, limit_s))
        return "session_complete", remaining_s

    # ------------------------------------------------------------------ clients

    def assign_client(self, client_id: str | None, *, belt_at_rest: bool, source: str) -> Event:
        """Assign the client for the next session (None clears it). Accepted only at rest.

        From a local source (``"console"``) the cap becomes the client's unlocked stage; from
        any other source (``"mqtt"``) the client is recorded but runs at stage 1 until a trainer
        confirms the assignment with the local trainer action. Assigning a different client
        ends the open session (end reason ``client_changed``).
        """
        local = source in LOCAL_SOURCES
        if client_id is not None and not CLIENT_ID_PATTERN.fullmatch(client_id):
            return ev.client_refused_bad_id(client_id, source)
        if not self._config.enabled:
            return ev.client_refused_disabled(client_id, source)
        if not belt_at_rest:
            return ev.client_refused_moving(client_id, source)
        if client_id == self._client_id:
            if local and client_id is not None and not self._client_confirmed:
                self._client_confirmed = True
                self._raise_cap_at_rest()
            return self._client_event(client_id, source, changed=False)

        if self._tracker.is_open and self._last_now_ms is not None and self._last_utc is not None:
            record = self._tracker.finish(
                self._last_now_ms, self._last_utc, EndReason.CLIENT_CHANGED
            )
            if record is not None:
                self._outbox.extend(
                    self._session_finished(record, self._last_utc, clear_client=False)
                )
        self._client_id = client_id
        self._client_confirmed = local and client_id is not None
        self._cap = 1
        self._raise_cap_at_rest()
        logger.info("client %s assigned from %s (stage cap %d)", client_id, source, self._cap)
        return self._client_event(client_id, source, changed=True)

    def _client_event(self, client_id: str | None, source: str, *, changed: bool) -> Event:
        return ev.client_assigned(
            client_id,
            source,
            self._cap,
            None if client_id is None else self.unlocked_stage(client_id),
            confirmed=self._client_confirmed,
            changed=changed,
        )

    # ------------------------------------------------------------------ progression

    def _trainer_action(self, utc: datetime, core: CoreState, measured_kmh: float | None) -> Event:
        client_id = self._client_id
        source = self._config.trainer.input
        if client_id is None:
            return ev.unlock_refused_no_client(source)
        if not self._belt_at_rest:
            return ev.unlock_refused_moving(client_id, source)
        if not self._client_confirmed:
            self._client_confirmed = True
            self._raise_cap_at_rest()
            logger.info("client %s confirmed by the trainer (stage cap %d)", client_id, self._cap)
            return ev.client_confirmed(client_id, source, self._cap)
        if not self._loaded:
            problem = None if self._writer is None else self._writer.store_error
            return ev.unlock_refused_log_unread(client_id, source, problem)
        status = self.unlock_status(client_id)
        criteria_json = json.dumps([c.to_json() for c in status.criteria])
        if status.next_stage is None:
            return ev.unlock_refused_at_top(client_id, source, status.current_stage, criteria_json)
        if not status.all_met:
            unmet = [criterion.describe() for criterion in status.unmet]
            return ev.unlock_refused_unmet(
                client_id, source, status.current_stage, status.next_stage, criteria_json, unmet
            )
        return self._change_stage(
            client_id, status.next_stage, utc, action="unlock", source=source, detail=criteria_json
        )

    def _change_stage(
        self,
        client_id: str,
        to_stage: int,
        utc: datetime,
        *,
        action: str,
        source: str,
        detail: object,
    ) -> Event:
        from_stage = self.unlocked_stage(client_id)
        record = ClientRecord(client_id, to_stage, utc)
        self._clients[client_id] = record
        entry = UnlockLogEntry(
            entry_id=self._new_id(),
            utc=utc,
            client_id=client_id,
            treadmill_id=self._treadmill_id,
            from_stage=from_stage,
            to_stage=to_stage,
            action=action,
            source=source,
            detail=detail if isinstance(detail, str) else json.dumps(detail),
        )
        if self._writer is not None:
            self._writer.queue_stage_change(record, entry)
        logger.info(
            "client %s: stage %d -> %d (%s, %s)", client_id, from_stage, to_stage, action, source
        )
        if action == "unlock":
            return ev.stage_unlocked(client_id, from_stage, to_stage, source)
        return ev.demoted(client_id, from_stage, to_stage, source, detail)

    def _session_finished(
        self, record: SessionRecord, utc: datetime, *, clear_client: bool
    ) -> list[Event]:
        self._remember(record)
        self._queue_session(record)
        self._finished_out.append(record.to_json())
        logger.info(
            "session %s finished (%s): %.0f s moving, %.0f m",
            record.session_id,
            record.end_reason,
            record.moving_s,
            record.distance_m,
        )
        events = [ev.session_finished(record, counted=counted(record, self._config))]
        if record.client_id is not None and self._loaded:
            events.extend(self._progress_client(record.client_id, utc))
        if clear_client and self._client_id is not None:
            cleared = self._client_id
            self._client_id = None
            self._client_confirmed = False
            self._cap = 1
            events.append(ev.client_cleared(cleared))
        return events

    def _progress_client(self, client_id: str, utc: datetime) -> list[Event]:
        """After a finished session: demote the client, or unlock the next stage when
        ``auto_unlock`` is on and every criterion is met without a trainer."""
        events: list[Event] = []
        unlocked = self.unlocked_stage(client_id)
        client = self._clients.get(client_id)
        demotion = demotion_due(
            self.client_history(client_id),
            unlocked,
            self._config,
            stage_since_utc=None if client is None else client.updated_utc,
        )
        if demotion is not None:
            events.append(
                self._change_stage(
                    client_id,
                    demotion.to_stage,
                    utc,
                    action="demote",
                    source="rule",
                    detail=demotion.reason,
                )
            )
        elif self._config.auto_unlock:
            status = unlock_status(
                self.client_history(client_id),
                unlocked,
                self._config,
                max_stage=self._max_stage,
            )
            if status.next_stage is not None and status.all_met and not status.needs_trainer:
                events.append(
                    self._change_stage(
                        client_id,
                        status.next_stage,
                        utc,
                        action="unlock",
                        source="auto",
                        detail=[c.to_json() for c in status.criteria],
                    )
                )
        return events

    # ------------------------------------------------------------------ caps

    def _wanted_cap(self) -> int:
        if self._client_id is None or not self._client_confirmed or not self._loaded:
            return 1
        return self.unlocked_stage(self._client_id)

    def _raise_cap_at_rest(self) -> None:
        """Called for actions that are only accepted at rest: apply the wanted cap now."""
        self._cap = self._wanted_cap()

    def _update_cap(self, core: CoreState, measured_kmh: float | None, out: list[Event]) -> None:
        wanted = self._wanted_cap()
        if wanted < self._cap or (wanted > self._cap and self._belt_at_rest):
            if wanted != self._cap:
                out.append(ev.stage_cap_changed(self._cap, wanted))
            self._cap = wanted

    # ------------------------------------------------------------------ storage

    def _remember(self, record: SessionRecord) -> None:
        sessions = self._history.setdefault(record.client_id, [])
        for index, existing in enumerate(sessions):
            if existing.session_id == record.session_id:
                sessions[index] = record
                return
        sessions.append(record)

    def _queue_session(self, record: SessionRecord) -> None:
        if self._writer is not None:
            self._writer.queue_session(record)

    def _report(self, event: Event) -> None:
        """An event raised off-tick (by the writer), delivered with the next tick."""
        self._outbox.append(event)

    def _merge_log(self, loaded: LoadedLog) -> None:
        """What an open of the log read, merged with what this run holds."""
        assert self._writer is not None  # noqa: S101 -- only the writer calls this
        # stage changes not yet written win over what the file says
        self._clients = {**loaded.clients, **self._writer.pending_clients}
        in_memory = [record for records in self._history.values() for record in records]
        self._history = {}
        for record in loaded.sessions:
            self._remember(record)
        for record in in_memory:
            self._remember(record)
        self._loaded = True
        self._outbox.extend(ev.session_interrupted(record) for record in loaded.interrupted)

    def _take_outbox(self) -> list[Event]:
        events, self._outbox = self._outbox, []
        return events
