"""Session tracking from control ticks (pure: no I/O, no clock, no randomness).

A *session* starts on the first tick where the measured belt speed is above the standstill
threshold while no session is open, and ends once the belt has been at rest for
``session_end_rest_s``. Everything is integrated from the ticks the service feeds in, with the
time passed in as ``now_ms`` (monotonic milliseconds) and ``utc`` (wall clock, used only to
stamp the start).

Integration is left-Riemann: the interval between two ticks is attributed to the values seen at
the first of them (speed, stage, at-speed flags). An interval longer than
:data:`MAX_TICK_GAP_MS` (a stalled loop) is counted as that long at most: the belt's behaviour in
a gap is unknown, and over-counting would flatter the unlock criteria.

"Continuous at a speed" (what the unlock rules ask for): the core is RUNNING, its commanded speed
is at or above the speed, and the measured speed is no lower than the speed minus the tolerance.
The core already stops the belt when the measured speed does not follow the command, so the
commanded speed is the reliable figure; the measured check keeps a stalled belt from counting.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from controller.rules.model import CoreState, Event, FaultCode, Mode

#: The longest interval between two ticks that is integrated (longer ones count this long).
MAX_TICK_GAP_MS = 2000
#: Commanded speeds this close below a threshold count as at it (0.1 km/h steps in floats).
SPEED_EPSILON_KMH = 0.01


class SessionStatus(StrEnum):
    OPEN = "open"  # in progress; the stored row is the latest checkpoint
    COMPLETE = "complete"  # ended normally (rest time, client change, shutdown)
    INTERRUPTED = "interrupted"  # found open after a restart: ended at its last checkpoint


class EndReason(StrEnum):
    REST = "rest"  # the belt was at rest for session_end_rest_s
    CLIENT_CHANGED = "client_changed"  # another client (or none) was assigned at rest
    SHUTDOWN = "shutdown"  # the service stopped
    POWER_LOSS = "power_loss"  # found open on startup (power cut or crash)


@dataclass(frozen=True)
class SessionRecord:
    """One session as stored in the log. Times in seconds, distance in metres.

    ``stage_s`` and ``continuous_s_at_kmh`` are sorted ``(key, seconds)`` pairs:
    moving seconds per stage, and the longest continuous run at or above each speed.
    """

    session_id: str
    treadmill_id: str
    client_id: str | None
    status: SessionStatus
    end_reason: EndReason | None
    start_utc: datetime
    end_utc: datetime  # start + duration (the last moment the belt moved, or the checkpoint)
    duration_s: float
    moving_s: float
    distance_m: float
    max_kmh: float
    stage_cap: int  # the highest stage the session was allowed
    highest_stage: int  # the highest stage the belt moved at (0: never moved at a stage)
    stage_s: tuple[tuple[int, float], ...]
    continuous_s_at_kmh: tuple[tuple[float, float], ...]
    grip_losses: int  # ``grip_lost`` events (grip missing beyond the grace time)
    grip_stops: int  # latched ``grip_lost`` faults (the belt was stopped for it)
    grip_warnings: int  # ``grip_warning`` events
    faults: tuple[str, ...]  # fault codes latched during the session, in order
    stop_reasons: tuple[str, ...]  # controlled stop reasons, in order
    checkpoint_utc: datetime | None = None  # when this row was written

    @property
    def avg_kmh(self) -> float:
        """Average speed over the moving time (km/h); 0 when the belt never moved."""
        return self.distance_m / self.moving_s * 3.6 if self.moving_s > 0 else 0.0

    @property
    def moving_min(self) -> float:
        return self.moving_s / 60.0

    def stage_seconds(self, stage: int) -> float:
        return dict(self.stage_s).get(stage, 0.0)

    def continuous_s(self, at_kmh: float) -> float:
        """Longest continuous run (s) at or above ``at_kmh``.

        When that exact speed was not tracked (the config changed since), the run at the
        lowest tracked speed above it is used: a run at or above a higher speed is also at or
        above the lower one, so this never over-counts. No such speed: 0.
        """
        candidates = [
            (kmh, seconds)
            for kmh, seconds in self.continuous_s_at_kmh
            if kmh >= at_kmh - SPEED_EPSILON_KMH
        ]
        if not candidates:
            return 0.0
        return min(candidates)[1]

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict (the MQTT ``session`` payload and the ``history --json`` rows)."""
        return {
            "session_id": self.session_id,
            "treadmill_id": self.treadmill_id,
            "client_id": self.client_id,
            "status": self.status.value,
            "end_reason": None if self.end_reason is None else self.end_reason.value,
            "start_utc": _iso(self.start_utc),
            "end_utc": _iso(self.end_utc),
            "duration_s": round(self.duration_s, 3),
            "moving_s": round(self.moving_s, 3),
            "distance_m": round(self.distance_m, 2),
            "max_kmh": round(self.max_kmh, 2),
            "avg_kmh": round(self.avg_kmh, 2),
            "stage_cap": self.stage_cap,
            "highest_stage": self.highest_stage,
            "stage_s": {str(stage): round(seconds, 3) for stage, seconds in self.stage_s},
            "continuous_s_at_kmh": {
                f"{kmh:.2f}": round(seconds, 3) for kmh, seconds in self.continuous_s_at_kmh
            },
            "grip_losses": self.grip_losses,
            "grip_stops": self.grip_stops,
            "grip_warnings": self.grip_warnings,
            "faults": list(self.faults),
            "stop_reasons": list(self.stop_reasons),
            "checkpoint_utc": None if self.checkpoint_utc is None else _iso(self.checkpoint_utc),
        }


def iso_z(moment: datetime) -> str:
    """ISO 8601 UTC with milliseconds and ``Z``: the format of the MQTT state topic
    (:func:`controller.adapters.mqtt.telemetry.iso_utc`; a test checks they agree). A naive time
    is UTC."""
    aware = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    return aware.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


_iso = iso_z


@dataclass(frozen=True)
class SessionProgress:
    """The open session's running figures (cheap: computed every tick for telemetry)."""

    session_id: str
    client_id: str | None
    elapsed_s: float  # since the session started (includes pauses at rest)
    moving_s: float
    distance_m: float
    highest_stage: int


@dataclass(frozen=True)
class TrackerUpdate:
    """What one tick did to the session: at most one of each."""

    started: SessionRecord | None = None
    finished: SessionRecord | None = None


class SessionTracker:
    """Turns control ticks into session records. One instance per treadmill.

    ``new_id`` makes session ids (the caller injects ``uuid4().hex``; tests inject a counter).
    ``thresholds_kmh``: the speeds whose longest continuous run is recorded.
    """

    def __init__(
        self,
        *,
        treadmill_id: str,
        session_end_rest_s: float,
        standstill_kmh: float,
        thresholds_kmh: Iterable[float],
        at_speed_tolerance_kmh: float,
        new_id: Callable[[], str],
    ) -> None:
        self._treadmill_id = treadmill_id
        self._end_rest_ms = round(session_end_rest_s * 1000)
        self._standstill_kmh = standstill_kmh
        self._thresholds_kmh = tuple(sorted({round(kmh, 2) for kmh in thresholds_kmh}))
        self._tolerance_kmh = at_speed_tolerance_kmh
        self._new_id = new_id
        self._open: _OpenSession | None = None

    @property
    def is_open(self) -> bool:
        return self._open is not None

    @property
    def client_id(self) -> str | None:
        return None if self._open is None else self._open.client_id

    def update(
        self,
        *,
        now_ms: int,
        utc: datetime,
        core: CoreState,
        measured_kmh: float | None,
        events: Iterable[Event],
        client_id: str | None,
        stage_cap: int,
    ) -> TrackerUpdate:
        """Feed one control tick. ``client_id``/``stage_cap`` are used when a session starts."""
        moving = measured_kmh is not None and measured_kmh > self._standstill_kmh
        session = self._open
        if session is None:
            if not moving:
                return TrackerUpdate()
            session = _OpenSession(
                session_id=self._new_id(),
                client_id=client_id,
                stage_cap=stage_cap,
                start_ms=now_ms,
                start_utc=utc,
                thresholds_kmh=self._thresholds_kmh,
            )
            self._open = session
            session.observe(core, measured_kmh, events, self._at_speed_flags(core, measured_kmh))
            return TrackerUpdate(started=self.snapshot(now_ms, utc))

        session.integrate(now_ms, self._standstill_kmh)
        session.observe(core, measured_kmh, events, self._at_speed_flags(core, measured_kmh))
        session.stage_cap = max(session.stage_cap, stage_cap)
        if moving:
            session.rest_since_ms = None
        elif session.rest_since_ms is None:
            session.rest_since_ms = now_ms
        if (
            session.rest_since_ms is not None
            and now_ms - session.rest_since_ms >= self._end_rest_ms
        ):
            return TrackerUpdate(finished=self.finish(now_ms, utc, EndReason.REST))
        return TrackerUpdate()

    def progress(self, now_ms: int) -> SessionProgress | None:
        """The open session's figures up to the last tick, or None when no session is open."""
        session = self._open
        if session is None:
            return None
        return SessionProgress(
            session_id=session.session_id,
            client_id=session.client_id,
            elapsed_s=max(now_ms - session.start_ms, 0) / 1000.0,
            moving_s=session.moving_ms / 1000.0,
            distance_m=session.distance_m,
            highest_stage=session.highest_stage,
        )

    def snapshot(self, now_ms: int, utc: datetime) -> SessionRecord | None:
        """The open session as a record with status OPEN (for checkpoints and telemetry)."""
        if self._open is None:
            return None
        return self._open.record(
            treadmill_id=self._treadmill_id,
            status=SessionStatus.OPEN,
            end_reason=None,
            end_ms=now_ms,
            checkpoint_utc=utc,
        )

    def finish(self, now_ms: int, utc: datetime, reason: EndReason) -> SessionRecord | None:
        """Close the open session now (COMPLETE); None when none is open.

        The session's end is the moment the belt came to rest (trailing rest is not part of
        it), or ``now_ms`` if the belt is still moving.
        """
        session = self._open
        if session is None:
            return None
        session.integrate(now_ms, self._standstill_kmh)
        end_ms = session.rest_since_ms if session.rest_since_ms is not None else now_ms
        self._open = None
        return session.record(
            treadmill_id=self._treadmill_id,
            status=SessionStatus.COMPLETE,
            end_reason=reason,
            end_ms=end_ms,
            checkpoint_utc=utc,
        )

    def _at_speed_flags(self, core: CoreState, measured_kmh: float | None) -> tuple[bool, ...]:
        if core.mode is not Mode.RUNNING or measured_kmh is None:
            return (False,) * len(self._thresholds_kmh)
        return tuple(
            core.commanded_kmh >= kmh - SPEED_EPSILON_KMH
            and measured_kmh >= kmh - self._tolerance_kmh
            for kmh in self._thresholds_kmh
        )


class _OpenSession:
    """Mutable accumulator of the open session; only :class:`SessionTracker` touches it."""

    def __init__(
        self,
        *,
        session_id: str,
        client_id: str | None,
        stage_cap: int,
        start_ms: int,
        start_utc: datetime,
        thresholds_kmh: tuple[float, ...],
    ) -> None:
        self.session_id = session_id
        self.client_id = client_id
        self.stage_cap = stage_cap
        self.start_ms = start_ms
        self.start_utc = start_utc
        self.thresholds_kmh = thresholds_kmh
        self.last_ms = start_ms
        self.rest_since_ms: int | None = None
        self.moving_ms = 0
        self.distance_m = 0.0
        self.max_kmh = 0.0
        self.highest_stage = 0
        self.stage_ms: dict[int, int] = {}
        self.run_ms = [0] * len(thresholds_kmh)
        self.longest_run_ms = [0] * len(thresholds_kmh)
        self.grip_losses = 0
        self.grip_stops = 0
        self.grip_warnings = 0
        self.faults: list[str] = []
        self.stop_reasons: list[str] = []
        # values seen at the last tick (the left end of the next interval)
        self.prev_kmh = 0.0
        self.prev_stage = 0
        self.prev_at_speed: tuple[bool, ...] = (False,) * len(thresholds_kmh)
        self.prev_fault: FaultCode | None = None
        self.prev_stop_reason: str | None = None

    def integrate(self, now_ms: int, standstill_kmh: float) -> None:
        """Account for the interval since the last tick with the values seen at that tick.

        Times are summed in integer milliseconds, so that long sessions do not drift.
        """
        dt_ms = now_ms - self.last_ms
        if dt_ms <= 0:
            return
        self.last_ms = now_ms
        dt_ms = min(dt_ms, MAX_TICK_GAP_MS)
        if self.prev_kmh > standstill_kmh:
            self.moving_ms += dt_ms
            self.distance_m += self.prev_kmh / 3.6 * dt_ms / 1000.0
            self.stage_ms[self.prev_stage] = self.stage_ms.get(self.prev_stage, 0) + dt_ms
            self.highest_stage = max(self.highest_stage, self.prev_stage)
        for index, at_speed in enumerate(self.prev_at_speed):
            if at_speed:
                self.run_ms[index] += dt_ms
                self.longest_run_ms[index] = max(self.longest_run_ms[index], self.run_ms[index])

    def observe(
        self,
        core: CoreState,
        measured_kmh: float | None,
        events: Iterable[Event],
        at_speed: tuple[bool, ...],
    ) -> None:
        """Take this tick's values: they hold until the next tick."""
        speed_kmh = 0.0 if measured_kmh is None else max(measured_kmh, 0.0)
        self.prev_kmh = speed_kmh
        self.max_kmh = max(self.max_kmh, speed_kmh)
        self.prev_stage = core.stage
        for index, flag in enumerate(at_speed):
            if not flag:
                self.run_ms[index] = 0
        self.prev_at_speed = at_speed
        for event in events:
            if event.kind == "grip_lost":
                self.grip_losses += 1
            elif event.kind == "grip_warning":
                self.grip_warnings += 1
        fault = None if core.fault is None else core.fault.code
        if fault is not None and fault != self.prev_fault:
            self.faults.append(fault.value)
            if fault is FaultCode.GRIP_LOST:
                self.grip_stops += 1
        self.prev_fault = fault
        if core.stop_reason is not None and core.stop_reason != self.prev_stop_reason:
            self.stop_reasons.append(core.stop_reason)
        self.prev_stop_reason = core.stop_reason

    def record(
        self,
        *,
        treadmill_id: str,
        status: SessionStatus,
        end_reason: EndReason | None,
        end_ms: int,
        checkpoint_utc: datetime,
    ) -> SessionRecord:
        duration_s = max(end_ms - self.start_ms, 0) / 1000.0
        return SessionRecord(
            session_id=self.session_id,
            treadmill_id=treadmill_id,
            client_id=self.client_id,
            status=status,
            end_reason=end_reason,
            start_utc=self.start_utc,
            end_utc=self.start_utc + timedelta(seconds=duration_s),
            duration_s=duration_s,
            moving_s=self.moving_ms / 1000.0,
            distance_m=self.distance_m,
            max_kmh=self.max_kmh,
            stage_cap=self.stage_cap,
            highest_stage=self.highest_stage,
            stage_s=tuple((stage, ms / 1000.0) for stage, ms in sorted(self.stage_ms.items())),
            continuous_s_at_kmh=tuple(
                (kmh, ms / 1000.0)
                for kmh, ms in zip(self.thresholds_kmh, self.longest_run_ms, strict=True)
            ),
            grip_losses=self.grip_losses,
            grip_stops=self.grip_stops,
            grip_warnings=self.grip_warnings,
            faults=tuple(self.faults),
            stop_reasons=tuple(self.stop_reasons),
            checkpoint_utc=checkpoint_utc,
        )


def interrupted(record: SessionRecord) -> SessionRecord:
    """A session found OPEN after a restart, closed at its last checkpoint."""
    return replace(record, status=SessionStatus.INTERRUPTED, end_reason=EndReason.POWER_LOSS)
