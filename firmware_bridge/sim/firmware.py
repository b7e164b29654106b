"""Simulated motor-controller firmware: the contract of docs/firmware-safety.md as a
deterministic state machine.

:class:`SimFirmware` is driven with explicit times: :meth:`SimFirmware.receive` takes the
bytes the host sent and :meth:`SimFirmware.tick` advances time; both return the bytes the
firmware sends back. There is no I/O, no clock and no global randomness here (an injected
:class:`random.Random` drives the belt noise, the boot ids and the injected link faults), so
the same seed and the same calls replay the same run. :mod:`firmware_bridge.sim.pty` serves
it on a pseudo-terminal.

What the simulated firmware guarantees (rule ids from docs/firmware-safety.md; the state
table is protocol.md §6):

- FW-1: motor disabled at boot; after the self-test (BOOT) one unsolicited HELLO with a fresh
  non-zero ``boot_id``; nothing of a previous boot survives;
- FW-2: one shutdown path (:meth:`SimFirmware._shutdown`): category 0 cuts motor power at
  once, category 1 ramps at the configured maximum deceleration and then cuts it;
- FW-3: the motion lease; a repeated SET_SPEED (same SEQ as the frame before) never renews it;
- FW-4: compiled-in ceilings (:class:`SimConfig`): above a ceiling is a latched fault, never
  a clamp;
- FW-5: STOP and ESTOP in every state, from any CRC-valid frame, even a malformed one;
- FW-6: only HELLO, GET_STATUS, STOP, ESTOP and CLEAR_FAULT while faulted;
- FW-7: CLEAR_FAULT only at rest with the cause gone; it never restarts the belt;
- FW-8: no motion before a matching HELLO and a CONFIGURE; the checksum echoed in STATUS;
- FW-9: the belt starts only from rest; a STOP holds until rest;
- FW-10: the safety key is in the motor power path: open cuts power and latches;
- FW-11: STATUS at 50 Hz outside BOOT, skipped rather than burst when late;
- FW-12: overspeed and silent-sensor checks while the motor is powered
  (``SimConfig.self_checks``; switch them off to test the controller's own checks alone);
- FW-13 / FW-14: corrupt frames never act; refused frames are NAKed; a flood of them while
  RUNNING latches BAD_FRAME_FLOOD.

Faults of the simulated hardware and link are injected with :meth:`SimFirmware.inject`
(or at start through :attr:`SimConfig.faults`).
"""

from __future__ import annotations

import logging
import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

from firmware_bridge.sim.physics import BeltPhysics, PhysicsParams
from firmware_bridge.wire.codec import Frame, FrameDecoder, RejectedFrame, RejectKind, encode_frame
from firmware_bridge.wire.faults import CATEGORY_0_FAULTS
from firmware_bridge.wire.link import RxSequenceChecker, SeqKind, SequenceCounter
from firmware_bridge.wire.messages import (
    ACCEPTED_IN_FAULT,
    PROTOCOL_VERSION,
    Ack,
    ClearFault,
    Configure,
    EStop,
    FaultReport,
    FwFault,
    FwState,
    GetStatus,
    Hello,
    Message,
    MsgId,
    Nak,
    NakReason,
    ResetCause,
    SetSpeed,
    Status,
    Stop,
)


def wire_speed_kmh(speed_kmh: float) -> float:
    """``speed_kmh`` at SET_SPEED's resolution of 0.01 km/h (FW-4 compares at it)."""
    return round(speed_kmh * 100) / 100


__all__ = [
    "HostFrame",
    "InjectedFault",
    "SimConfig",
    "SimFault",
    "SimFirmware",
]

_LOG = logging.getLogger(__name__)

_U32 = 1 << 32
#: FW-13: what a CRC-valid but refused frame is answered with.
_REJECT_NAK = {
    RejectKind.UNKNOWN_ID: NakReason.UNKNOWN_MESSAGE,
    RejectKind.BAD_LENGTH: NakReason.BAD_PAYLOAD,
    RejectKind.BAD_FIELD: NakReason.OUT_OF_RANGE,
}
_STATUS_LEASE_MAX_MS = 10_000  # Status.lease_remaining_ms range


class SimFault(Enum):
    """Faults the simulator can inject. The value is the name used on the command line."""

    DROP_FRAMES = "drop_frames"  # lose pct % of frames, both directions
    CORRUPT_BYTES = "corrupt_bytes"  # flip pct % of bytes, both directions
    SENSOR_FREEZE = "sensor_freeze"  # the speed reading stays at its present value
    RUNAWAY = "runaway"  # the motor board accelerates on its own while powered
    STUCK_SPEED = "stuck_speed"  # the motor board holds its present output while powered
    REBOOT = "reboot"  # the firmware resets now (one-shot)
    DISCONNECT = "disconnect"  # the cable is unplugged (PtySimulator only)
    LEASE_IGNORED = "lease_ignored"  # broken firmware: the lease never expires
    SENSOR_SILENT = "sensor_silent"  # the firmware's speed sensor gives no more pulses
    BELT_SLIP = "belt_slip"  # the belt slips pct % on the driven roller (firmware's sensor)
    BELT_SENSOR_FROZEN = "belt_sensor_frozen"  # the Pi's sensor pulses at a fixed period
    BELT_SENSOR_SILENT = "belt_sensor_silent"  # the Pi's sensor gives no more pulses
    BELT_SENSOR_NOISY = "belt_sensor_noisy"  # the Pi's sensor: pct % jitter and bounce

    @classmethod
    def parse(cls, name: str) -> SimFault:
        """The fault called ``name`` (case-insensitive, ``-`` or ``_``), or ValueError."""
        key = name.strip().lower().replace("-", "_")
        try:
            return cls(key)
        except ValueError:
            allowed = ", ".join(f.value for f in cls)
            raise ValueError(f"unknown simulated fault {name!r}: allowed {allowed}") from None


#: Faults that need a percentage.
_PCT_FAULTS = frozenset(
    {SimFault.DROP_FRAMES, SimFault.CORRUPT_BYTES, SimFault.BELT_SLIP, SimFault.BELT_SENSOR_NOISY}
)


@dataclass(frozen=True)
class InjectedFault:
    """A fault to inject at start. ``pct`` for DROP_FRAMES / CORRUPT_BYTES (0..100],
    ``accel_kmh_s`` for RUNAWAY."""

    fault: SimFault
    pct: float | None = None
    accel_kmh_s: float | None = None


@dataclass(frozen=True)
class SimConfig:
    """The simulated firmware's compiled-in constants and the simulated hardware."""

    max_speed_kmh: float = 16.0  # compiled-in speed ceiling (FW-4)
    max_accel_kmh_s: float = 2.0  # compiled-in acceleration ceiling (FW-4)
    max_decel_kmh_s: float = 10.0  # highest CONFIGURE max_decel accepted
    max_lease_ms: int = 1000  # highest CONFIGURE max_lease_ms accepted
    default_decel_kmh_s: float = 3.6  # fault ramp before any CONFIGURE
    fw_version: str = "1.0.0"
    protocol_version: int = PROTOCOL_VERSION
    self_test_ms: int = 50  # BOOT lasts this long; the UART is not serviced meanwhile
    status_period_ms: int = 20  # unsolicited STATUS rate (50 Hz)
    standstill_kmh: float = 0.1  # measured at or below this: at rest
    safety_key_closed: bool = True  # key state at power-on
    self_checks: bool = True  # FW-12/FW-13 plausibility checks while driving
    overspeed_margin_kmh: float = 0.5  # overspeed: measured > peak set-point + margin ...
    overspeed_rel: float = 0.10  # ... margin = max(margin_kmh, rel * peak set-point)
    overspeed_window_ms: int = 1500  # peak set-point over this window (covers sensor lag)
    overspeed_ms: int = 300  # ... for this long
    sensor_min_kmh: float = 1.0  # sensor silent: set-point at or above this ...
    sensor_silent_ms: int = 2500  # ... and measured 0 this long
    bad_frame_limit: int = 20  # more corrupt frames than this ...
    bad_frame_window_ms: int = 1000  # ... in this window while driving: BAD_FRAME_FLOOD
    host_log_size: int = 4096  # frames from the host kept in the log
    physics: PhysicsParams = field(default_factory=PhysicsParams)
    faults: tuple[InjectedFault, ...] = ()

    def __post_init__(self) -> None:
        positive = {
            "max_speed_kmh": self.max_speed_kmh,
            "max_accel_kmh_s": self.max_accel_kmh_s,
            "max_decel_kmh_s": self.max_decel_kmh_s,
            "max_lease_ms": self.max_lease_ms,
            "default_decel_kmh_s": self.default_decel_kmh_s,
            "status_period_ms": self.status_period_ms,
            "overspeed_window_ms": self.overspeed_window_ms,
            "bad_frame_window_ms": self.bad_frame_window_ms,
            "host_log_size": self.host_log_size,
        }
        for name, value in positive.items():
            if not value > 0:
                raise ValueError(f"SimConfig.{name} must be > 0, got {value!r}")
        if self.self_test_ms < 0:
            raise ValueError(f"SimConfig.self_test_ms must be >= 0, got {self.self_test_ms!r}")


@dataclass(frozen=True)
class HostFrame:
    """A frame the firmware received from the host, with the firmware's time of receipt."""

    now_ms: int
    frame: Frame


class SimFirmware:
    """The simulated firmware. Every method takes the time as ``now_ms`` (integer ms).

    >>> import random
    >>> fw = SimFirmware(SimConfig(), random.Random(7), now_ms=0)
    >>> out = fw.tick(100)  # boot finished: unsolicited HELLO, then STATUS frames
    >>> fw.state.name
    'IDLE'
    """

    def __init__(
        self,
        config: SimConfig,
        rng: random.Random,
        *,
        now_ms: int = 0,
        on_host_frame: Callable[[Frame, int], None] | None = None,
    ) -> None:
        self._config = config
        self._rng = rng
        self.on_host_frame = on_host_frame
        self._physics = BeltPhysics(config.physics, rng, now_ms=now_ms)
        self._host_log: deque[HostFrame] = deque(maxlen=config.host_log_size)
        self._drop_pct = 0.0
        self._corrupt_pct = 0.0
        self._lease_ignored = False
        self._key_closed = config.safety_key_closed
        self._now_ms = now_ms
        self._boots = 0
        self._statuses_sent = 0
        self._frames_dropped = 0
        self._bytes_corrupted = 0
        # Set by _boot():
        self._state = FwState.BOOT
        self._fault = FwFault.NONE
        self._boot_ms = now_ms
        self._boot_id = 0
        self._reset_cause = ResetCause.POWER_ON
        self._decoder = FrameDecoder()
        self._rx_seq = RxSequenceChecker()
        self._tx_seq = SequenceCounter()
        self._out: list[bytes] = []
        self._host_hello_ok = False
        self._configure: Configure | None = None
        self._contactor = False
        self._target_kmh = 0.0
        self._commanded_kmh = 0.0
        self._ramp_kmh_s = config.default_decel_kmh_s
        self._lease_deadline_ms: int | None = None
        self._last_applied_seq: int | None = None
        self._next_status_ms = now_ms
        self._setpoint_history: deque[tuple[int, float]] = deque()
        self._overspeed_since_ms: int | None = None
        self._silent_since_ms: int | None = None
        self._bad_frames: deque[int] = deque()
        self._decoder_errors_seen = 0
        self._boot(now_ms, ResetCause.POWER_ON)
        for spec in config.faults:
            self.inject(spec.fault, now_ms=now_ms, pct=spec.pct, accel_kmh_s=spec.accel_kmh_s)

    # ------------------------------------------------------------------ properties

    @property
    def config(self) -> SimConfig:
        return self._config

    @property
    def physics(self) -> BeltPhysics:
        """The simulated belt (read it; drive it only through the firmware)."""
        return self._physics

    @property
    def true_speed_kmh(self) -> float:
        """The actual belt speed (km/h), not what the sensor says."""
        return self._physics.true_speed_kmh

    @property
    def measured_kmh(self) -> float:
        """The speed sensor's reading (km/h): what STATUS reports."""
        return self._physics.measured_kmh

    @property
    def commanded_kmh(self) -> float:
        """The firmware's ramped set-point (km/h)."""
        return self._commanded_kmh

    @property
    def target_kmh(self) -> float:
        return self._target_kmh

    @property
    def state(self) -> FwState:
        return self._state

    @property
    def fault(self) -> FwFault:
        return self._fault

    @property
    def boot_id(self) -> int:
        return self._boot_id

    @property
    def boots(self) -> int:
        """Boots since the simulator started (1 after power-on)."""
        return self._boots

    @property
    def configuration(self) -> Configure | None:
        """The accepted CONFIGURE of this boot, None before one."""
        return self._configure

    @property
    def motor_enabled(self) -> bool:
        """True while the firmware's motor enable output (the power contactor) is on."""
        return self._contactor

    @property
    def motor_powered(self) -> bool:
        """True while the motor has power (contactor closed and safety key closed)."""
        return self._contactor and self._key_closed

    @property
    def last_applied_seq(self) -> int | None:
        return self._last_applied_seq

    @property
    def lease_remaining_ms(self) -> int:
        if self._state is not FwState.RUNNING or self._lease_deadline_ms is None:
            return 0
        return max(0, min(_STATUS_LEASE_MAX_MS, self._lease_deadline_ms - self._now_ms))

    @property
    def safety_key_closed(self) -> bool:
        return self._key_closed

    @safety_key_closed.setter
    def safety_key_closed(self, closed: bool) -> None:
        self.set_safety_key(closed, now_ms=self._now_ms)

    @property
    def active_faults(self) -> frozenset[SimFault]:
        """Injected faults in force now (REBOOT and DISCONNECT are events, never listed)."""
        active: set[SimFault] = set()
        if self._drop_pct > 0:
            active.add(SimFault.DROP_FRAMES)
        if self._corrupt_pct > 0:
            active.add(SimFault.CORRUPT_BYTES)
        if self._physics.sensor_frozen:
            active.add(SimFault.SENSOR_FREEZE)
        if self._physics.runaway:
            active.add(SimFault.RUNAWAY)
        if self._physics.stuck:
            active.add(SimFault.STUCK_SPEED)
        if self._lease_ignored:
            active.add(SimFault.LEASE_IGNORED)
        physics = self._physics
        if physics.sensor_silent:
            active.add(SimFault.SENSOR_SILENT)
        if physics.slip_frac > 0:
            active.add(SimFault.BELT_SLIP)
        aux = {
            "frozen": SimFault.BELT_SENSOR_FROZEN,
            "silent": SimFault.BELT_SENSOR_SILENT,
            "noisy": SimFault.BELT_SENSOR_NOISY,
        }
        if physics.aux_fault is not None:
            active.add(aux[physics.aux_fault])
        return frozenset(active)

    @property
    def host_frames(self) -> tuple[HostFrame, ...]:
        """Frames received from the host (bounded log, oldest first)."""
        return tuple(self._host_log)

    def first_host_frame(
        self, kinds: tuple[type[Message], ...], since_ms: int = 0
    ) -> HostFrame | None:
        """The first logged host frame of one of ``kinds`` received at or after ``since_ms``.

        E.g. ``first_host_frame((Stop, EStop), t0)``: when the first stop reached the firmware.
        """
        for entry in self._host_log:
            if entry.now_ms >= since_ms and isinstance(entry.frame.message, kinds):
                return entry
        return None

    @property
    def statuses_sent(self) -> int:
        return self._statuses_sent

    @property
    def frames_dropped(self) -> int:
        """Frames lost to DROP_FRAMES (both directions)."""
        return self._frames_dropped

    @property
    def bytes_corrupted(self) -> int:
        """Bytes flipped by CORRUPT_BYTES (both directions)."""
        return self._bytes_corrupted

    # ------------------------------------------------------------------ inputs

    def receive(self, data: bytes, now_ms: int) -> bytes:
        """Bytes arrived from the host at ``now_ms``; returns the bytes to send back."""
        self._update(now_ms)
        if self._corrupt_pct > 0:
            data = self._corrupt(data)
        frames = self._decoder.feed(data)
        rejects = self._decoder.take_rejects()
        self._count_bad_frames(now_ms)
        for frame in frames:
            if self._drop_pct > 0 and self._rng.random() * 100.0 < self._drop_pct:
                self._frames_dropped += 1
                continue
            self._host_log.append(HostFrame(now_ms, frame))
            if self.on_host_frame is not None:
                self.on_host_frame(frame, now_ms)
            self._handle(frame, now_ms)
        # Refused frames last, so that a malformed stop is never overtaken (FW-5).
        for reject in rejects:
            self._handle_reject(reject)
        return self._drain()

    def tick(self, now_ms: int) -> bytes:
        """Advance to ``now_ms``; returns what the firmware sends meanwhile (STATUS at 50 Hz)."""
        self._update(now_ms)
        if self._state is not FwState.BOOT and now_ms >= self._next_status_ms:
            self._emit(self._status())
            self._next_status_ms += self._config.status_period_ms
            if self._next_status_ms <= now_ms:
                # Fell behind (the host process stalled): skip, never burst.
                self._next_status_ms = now_ms + self._config.status_period_ms
        return self._drain()

    def set_safety_key(self, closed: bool, *, now_ms: int) -> None:
        """Close or open the safety key (clip cord) circuit, which is in the motor power path.

        Opening it cuts motor power in hardware at once and latches SAFETY_KEY_OPEN (FW-10).
        """
        self._update(now_ms)
        if closed == self._key_closed:
            return
        self._key_closed = closed
        if not closed and self._state is not FwState.BOOT:
            self._shutdown(FwFault.SAFETY_KEY_OPEN, 0)
        # In BOOT the power is cut at once too; the fault latches when the self-test ends,
        # after the unsolicited HELLO (FW-1).
        self._apply_power()

    # ------------------------------------------------------------------ fault injection

    def inject(
        self,
        fault: SimFault,
        *,
        now_ms: int | None = None,
        pct: float | None = None,
        accel_kmh_s: float | None = None,
    ) -> None:
        """Inject ``fault`` (see :class:`SimFault`). ``pct`` (0..100] for DROP_FRAMES,
        CORRUPT_BYTES, BELT_SLIP (at most 95 % is applied) and BELT_SENSOR_NOISY (default 10),
        ``accel_kmh_s`` for RUNAWAY (default 0.5)."""
        when = self._now_ms if now_ms is None else now_ms
        if pct is not None and fault not in _PCT_FAULTS:
            raise ValueError(
                f"{fault.value} takes no percentage (got pct={pct!r}); only "
                + ", ".join(sorted(f.value for f in _PCT_FAULTS))
                + " do"
            )
        if accel_kmh_s is not None and fault is not SimFault.RUNAWAY:
            raise ValueError(
                f"{fault.value} takes no acceleration (got accel_kmh_s={accel_kmh_s!r}); "
                "only runaway does"
            )
        self._update(when)
        if fault in _PCT_FAULTS:
            value = 10.0 if pct is None else float(pct)
            if not 0 < value <= 100 or math.isnan(value):
                raise ValueError(
                    f"{fault.value} needs a percentage in (0, 100], got {pct!r}: "
                    f"e.g. `inject {fault.value} 10`"
                )
            if fault is SimFault.DROP_FRAMES:
                self._drop_pct = value
            elif fault is SimFault.CORRUPT_BYTES:
                self._corrupt_pct = value
            elif fault is SimFault.BELT_SLIP:
                self._physics.set_slip(min(value, 95.0) / 100.0)
            else:
                self._physics.set_aux_noise(value)
        elif fault is SimFault.SENSOR_FREEZE:
            self._physics.set_sensor_frozen(True)
        elif fault is SimFault.RUNAWAY:
            accel = 0.5 if accel_kmh_s is None else float(accel_kmh_s)
            if not accel > 0:
                raise ValueError(f"runaway needs accel_kmh_s > 0, got {accel_kmh_s!r}")
            self._physics.set_runaway(accel)
        elif fault is SimFault.STUCK_SPEED:
            self._physics.set_stuck(True)
        elif fault is SimFault.REBOOT:
            self._boot(when, ResetCause.WATCHDOG)
        elif fault is SimFault.LEASE_IGNORED:
            self._lease_ignored = True
        elif fault is SimFault.SENSOR_SILENT:
            self._physics.set_sensor_silent(True)
        elif fault is SimFault.BELT_SENSOR_FROZEN:
            self._physics.set_aux_fault("frozen")
        elif fault is SimFault.BELT_SENSOR_SILENT:
            self._physics.set_aux_fault("silent")
        else:  # SimFault.DISCONNECT
            raise ValueError(
                "disconnect is a cable fault: use PtySimulator.disconnect() / inject(DISCONNECT)"
            )
        _LOG.info("sim: fault %s injected", fault.value)

    def clear(self, fault: SimFault) -> None:
        """Remove an injected fault (REBOOT and DISCONNECT: nothing to clear here)."""
        if fault is SimFault.DROP_FRAMES:
            self._drop_pct = 0.0
        elif fault is SimFault.CORRUPT_BYTES:
            self._corrupt_pct = 0.0
        elif fault is SimFault.SENSOR_FREEZE:
            self._physics.set_sensor_frozen(False)
        elif fault is SimFault.RUNAWAY:
            self._physics.set_runaway(None)
        elif fault is SimFault.STUCK_SPEED:
            self._physics.set_stuck(False)
        elif fault is SimFault.LEASE_IGNORED:
            self._lease_ignored = False
        elif fault is SimFault.SENSOR_SILENT:
            self._physics.set_sensor_silent(False)
        elif fault is SimFault.BELT_SLIP:
            self._physics.set_slip(0.0)
        elif fault in (SimFault.BELT_SENSOR_FROZEN, SimFault.BELT_SENSOR_SILENT):
            self._physics.set_aux_fault(None)
        elif fault is SimFault.BELT_SENSOR_NOISY:
            self._physics.set_aux_noise(0.0)
        _LOG.info("sim: fault %s cleared", fault.value)

    # ------------------------------------------------------------------ boot and shutdown

    def _boot(self, now_ms: int, cause: ResetCause) -> None:
        """Reset: motor off, everything forgotten, new boot id; HELLO when BOOT ends (FW-1)."""
        self._boots += 1
        self._state = FwState.BOOT
        self._fault = FwFault.NONE
        self._boot_ms = now_ms
        new_id = self._rng.getrandbits(32)
        while new_id in (0, self._boot_id):
            new_id = self._rng.getrandbits(32)
        self._boot_id = new_id
        self._reset_cause = cause
        self._decoder = FrameDecoder()
        self._decoder_errors_seen = 0
        self._rx_seq = RxSequenceChecker()
        self._tx_seq = SequenceCounter()
        self._out = []
        self._host_hello_ok = False
        self._configure = None
        self._contactor = False
        self._target_kmh = 0.0
        self._commanded_kmh = 0.0
        self._ramp_kmh_s = self._config.default_decel_kmh_s
        self._lease_deadline_ms = None
        self._last_applied_seq = None
        self._setpoint_history.clear()
        self._overspeed_since_ms = None
        self._silent_since_ms = None
        self._bad_frames.clear()
        self._physics.set_setpoint(0.0)
        self._apply_power()
        _LOG.info("sim: firmware boot %d (%s), boot_id %#010x", self._boots, cause.name, new_id)

    def _shutdown(self, fault: FwFault, detail: int) -> None:
        """The one shutdown path (FW-2): latch ``fault`` and bring the belt to rest.

        Category 0 faults (``CATEGORY_0_FAULTS``, the stop categories of the wire data
        dictionary, firmware_bridge/wire/faults.py) remove motor power now: a motor that
        may not obey a ramp is not asked to. Category 1 faults ramp the set-point to 0 at the
        configured maximum deceleration and remove power at the end of the ramp. The first
        fault's code stays latched; a later one can only make the stop harder.
        """
        if self._state is not FwState.FAULT:
            _LOG.info(
                "sim: firmware %s -> FAULT (%s, detail %d)", self._state.name, fault.name, detail
            )
            self._state = FwState.FAULT
            self._fault = fault
            self._emit(FaultReport(code=fault, detail=detail))
        self._target_kmh = 0.0
        self._lease_deadline_ms = None
        self._ramp_kmh_s = max(self._ramp_kmh_s, self._max_decel_kmh_s())
        if fault in CATEGORY_0_FAULTS:
            self._contactor = False
            self._commanded_kmh = 0.0
            self._physics.set_setpoint(0.0)
        self._apply_power()

    def _max_decel_kmh_s(self) -> float:
        if self._configure is not None:
            return self._configure.max_decel_kmh_s
        return self._config.default_decel_kmh_s

    def _apply_power(self) -> None:
        self._physics.set_motor_power(self._contactor and self._key_closed)

    # ------------------------------------------------------------------ time

    def _update(self, now_ms: int) -> None:
        """Advance the firmware and the belt to ``now_ms`` (never backwards)."""
        now_ms = max(now_ms, self._now_ms)
        dt_s = (now_ms - self._now_ms) / 1000.0
        self._now_ms = now_ms
        cfg = self._config

        if self._state is FwState.BOOT and now_ms - self._boot_ms >= cfg.self_test_ms:
            self._state = FwState.IDLE
            self._next_status_ms = now_ms
            self._emit(self._hello())  # FW-1: unsolicited HELLO after every boot
            if not self._key_closed:
                self._shutdown(FwFault.SAFETY_KEY_OPEN, 0)

        # FW-3: the motion lease.
        if (
            self._state is FwState.RUNNING
            and self._lease_deadline_ms is not None
            and now_ms > self._lease_deadline_ms
            and not self._lease_ignored
        ):
            overdue_ms = now_ms - self._lease_deadline_ms
            self._shutdown(FwFault.LEASE_EXPIRED, overdue_ms)

        # The firmware's own ramp toward the target.
        if self._commanded_kmh != self._target_kmh and dt_s > 0:
            step = self._ramp_kmh_s * dt_s
            if self._commanded_kmh < self._target_kmh:
                self._commanded_kmh = min(self._target_kmh, self._commanded_kmh + step)
            else:
                self._commanded_kmh = max(self._target_kmh, self._commanded_kmh - step)
        if self._contactor:
            self._physics.set_setpoint(self._commanded_kmh)
        self._physics.advance(now_ms)

        # End of a category 1 stop: set-point at 0, then power removed (FW-2). A RUNNING
        # belt asked for 0 keeps power (the board brakes) until it is at rest.
        ramp_done = self._target_kmh == 0.0 and self._commanded_kmh == 0.0
        if ramp_done:
            if self._state in (FwState.STOPPING, FwState.FAULT):
                self._contactor = False
                self._apply_power()
            if self._state in (FwState.STOPPING, FwState.RUNNING) and self._at_rest():
                _LOG.info("sim: firmware %s -> IDLE (at rest)", self._state.name)
                self._state = FwState.IDLE
                self._lease_deadline_ms = None
                self._contactor = False
                self._apply_power()

        self._self_checks(now_ms)

    def _at_rest(self) -> bool:
        """Set-point 0, reading at or below standstill and no recent sensor pulse."""
        return (
            self._commanded_kmh == 0.0
            and self.measured_kmh <= self._config.standstill_kmh
            and self._physics.sensor_quiet
        )

    def _self_checks(self, now_ms: int) -> None:
        """FW-12: plausibility of the belt against the set-point while the motor is powered."""
        cfg = self._config
        # Sliding-window maximum of the set-point: values kept in decreasing order.
        history = self._setpoint_history
        while history and history[-1][1] <= self._commanded_kmh:
            history.pop()
        history.append((now_ms, self._commanded_kmh))
        while history[0][0] < now_ms - cfg.overspeed_window_ms:
            history.popleft()
        if not cfg.self_checks or not self.motor_powered:
            self._overspeed_since_ms = None
            self._silent_since_ms = None
            return
        measured = self.measured_kmh
        peak_kmh = history[0][1]
        margin = max(cfg.overspeed_margin_kmh, cfg.overspeed_rel * peak_kmh)
        if measured > peak_kmh + margin:
            if self._overspeed_since_ms is None:
                self._overspeed_since_ms = now_ms
            elif now_ms - self._overspeed_since_ms >= cfg.overspeed_ms:
                # A motor that runs away does not obey a ramp: cut its power.
                self._shutdown(FwFault.OVERSPEED, round(measured * 100))
                return
        else:
            self._overspeed_since_ms = None
        if self._commanded_kmh >= cfg.sensor_min_kmh and measured <= 0.0:
            if self._silent_since_ms is None:
                self._silent_since_ms = now_ms
            elif now_ms - self._silent_since_ms >= cfg.sensor_silent_ms:
                self._shutdown(FwFault.SENSOR_FAULT, 0)
                return
        else:
            self._silent_since_ms = None

    def _count_bad_frames(self, now_ms: int) -> None:
        """FW-13: too many corrupt frames in a window while driving -> BAD_FRAME_FLOOD."""
        errors = self._decoder.stats.errors
        new = errors - self._decoder_errors_seen
        self._decoder_errors_seen = errors
        cfg = self._config
        self._bad_frames.extend([now_ms] * new)
        while self._bad_frames and self._bad_frames[0] < now_ms - cfg.bad_frame_window_ms:
            self._bad_frames.popleft()
        if (
            cfg.self_checks
            and self._state is FwState.RUNNING
            and len(self._bad_frames) > cfg.bad_frame_limit
        ):
            self._shutdown(FwFault.BAD_FRAME_FLOOD, len(self._bad_frames))

    # ------------------------------------------------------------------ messages

    def _handle(self, frame: Frame, now_ms: int) -> None:
        msg = frame.message
        if self._state is FwState.BOOT:
            # Self-test: the UART is only polled for stops (the motor is off anyway); every
            # other frame goes unanswered and the host retransmits it.
            if isinstance(msg, Stop | EStop):
                self._emit(Ack(seq=frame.seq))
            return
        verdict = self._rx_seq.check(frame.seq)
        if verdict.kind is SeqKind.DUPLICATE and isinstance(msg, SetSpeed):
            # A repeated SET_SPEED must not renew the lease. Every other host message is
            # idempotent, so a retransmission (its answer was lost) is simply handled again.
            return
        if self._state is FwState.FAULT and msg.MSG_ID not in ACCEPTED_IN_FAULT:
            # FW-6: only HELLO, GET_STATUS, STOP, ESTOP and CLEAR_FAULT while faulted.
            self._answer(frame.seq, Nak(seq=frame.seq, reason=NakReason.REFUSED_IN_STATE))
            return
        if isinstance(msg, Hello):
            self._on_hello(frame.seq, msg)
        elif isinstance(msg, Configure):
            self._on_configure(frame.seq, msg)
        elif isinstance(msg, SetSpeed):
            self._on_set_speed(frame.seq, msg, now_ms)
        elif isinstance(msg, Stop):
            self._on_stop(frame.seq, msg)
        elif isinstance(msg, EStop):
            self._answer(frame.seq, Ack(seq=frame.seq))
            self._shutdown(FwFault.ESTOP, 0)  # FW-5
        elif isinstance(msg, ClearFault):
            self._on_clear_fault(frame.seq)
        elif isinstance(msg, GetStatus):
            self._emit(self._status())
        else:
            # STATUS, FAULT, ACK, NAK come from a firmware, never from the host.
            self._answer(frame.seq, Nak(seq=frame.seq, reason=NakReason.UNKNOWN_MESSAGE))

    def _handle_reject(self, reject: RejectedFrame) -> None:
        """FW-5 / FW-13: a CRC-valid frame whose content was refused by the decoder."""
        seq = reject.seq
        if reject.msg_id == MsgId.STOP:
            # A stop with a malformed payload is still a stop, at the maximum deceleration.
            self._emit(Ack(seq=seq))
            if self._state is not FwState.BOOT:
                self._stop(self._max_decel_kmh_s())
            return
        if reject.msg_id == MsgId.ESTOP:
            self._emit(Ack(seq=seq))
            if self._state is not FwState.BOOT:
                self._shutdown(FwFault.ESTOP, 0)
            return
        if self._state is FwState.BOOT:
            return
        self._rx_seq.check(seq)
        _LOG.info("sim: refused a host frame: %s", reject.reason)
        self._nak(seq, _REJECT_NAK[reject.kind])

    def _on_hello(self, seq: int, msg: Hello) -> None:
        self._host_hello_ok = msg.protocol_version == self._config.protocol_version
        self._answer(seq, Ack(seq=seq))
        self._emit(self._hello())

    def _on_configure(self, seq: int, msg: Configure) -> None:
        cfg = self._config
        reason: NakReason | None = None
        if not self._host_hello_ok:
            reason = NakReason.NO_HANDSHAKE
        elif not msg.checksum_ok:
            reason = NakReason.CONFIG_CHECKSUM
        elif (
            msg.max_speed_kmh > cfg.max_speed_kmh
            or msg.max_accel_kmh_s > cfg.max_accel_kmh_s
            or msg.max_decel_kmh_s > cfg.max_decel_kmh_s
            or msg.max_lease_ms > cfg.max_lease_ms
        ):
            reason = NakReason.ABOVE_CEILING
        elif self._state is not FwState.IDLE:
            reason = NakReason.BELT_MOVING
        if reason is not None:
            self._answer(seq, Nak(seq=seq, reason=reason))
            return
        self._configure = msg
        self._answer(seq, Ack(seq=seq))

    def _on_set_speed(self, seq: int, msg: SetSpeed, now_ms: int) -> None:
        cfg = self._config
        conf = self._configure
        if not self._host_hello_ok:
            self._nak(seq, NakReason.NO_HANDSHAKE)
            return
        if conf is None:
            self._nak(seq, NakReason.NOT_CONFIGURED)  # FW-8: no motion before CONFIGURE
            return
        if not self._key_closed:
            self._nak(seq, NakReason.REFUSED_IN_STATE)
            return
        if self._state is FwState.STOPPING:
            if msg.speed_kmh == 0.0:
                self._last_applied_seq = seq  # agrees with the stop; keeps the stop's ramp
                return
            self._nak(seq, NakReason.REFUSED_IN_STATE)  # a STOP holds until at rest
            return
        if msg.speed_kmh > min(conf.max_speed_kmh, cfg.max_speed_kmh):
            # FW-4: above a ceiling is a fault, never clamped.
            self._nak(seq, NakReason.ABOVE_CEILING)
            self._shutdown(FwFault.SPEED_ABOVE_CEILING, round(msg.speed_kmh * 100))
            return
        # FW-4: the ramp rate is an acceleration when the target is above the present
        # set-point and a deceleration when below it; each has its own ceiling. Compared at
        # the wire's resolution: a target equal to the set-point rounded to 0.01 km/h is
        # holding, which moves the set-point by half a resolution at most, so either ceiling
        # bounds its rate.
        accel_ceiling = min(conf.max_accel_kmh_s, cfg.max_accel_kmh_s)
        decel_ceiling = min(conf.max_decel_kmh_s, cfg.max_decel_kmh_s)
        setpoint_kmh = wire_speed_kmh(self._commanded_kmh)
        if msg.speed_kmh < setpoint_kmh:
            ramp_ceiling = decel_ceiling
        elif msg.speed_kmh > setpoint_kmh:
            ramp_ceiling = accel_ceiling
        else:
            ramp_ceiling = max(accel_ceiling, decel_ceiling)
        if msg.accel_kmh_s > ramp_ceiling:
            self._nak(seq, NakReason.ABOVE_CEILING)
            self._shutdown(FwFault.ACCEL_ABOVE_CEILING, round(msg.accel_kmh_s * 100))
            return
        if msg.lease_ms > conf.max_lease_ms:
            # Refused, lease not renewed: if the host insists, the running lease expires.
            self._nak(seq, NakReason.ABOVE_CEILING)
            return
        self._target_kmh = msg.speed_kmh
        self._ramp_kmh_s = msg.accel_kmh_s
        self._lease_deadline_ms = now_ms + msg.lease_ms
        self._last_applied_seq = seq
        if self._state is FwState.IDLE and msg.speed_kmh == 0.0:
            return  # nothing to energise
        if self._state is not FwState.RUNNING:
            _LOG.info("sim: firmware %s -> RUNNING", self._state.name)
        self._state = FwState.RUNNING
        self._contactor = True
        self._apply_power()

    def _on_stop(self, seq: int, msg: Stop) -> None:
        self._answer(seq, Ack(seq=seq))
        self._stop(msg.decel_kmh_s)

    def _stop(self, decel_kmh_s: float) -> None:
        """FW-5 STOP: category 1 stop at ``decel_kmh_s``; ends the lease (FW-3)."""
        if self._state is FwState.RUNNING:
            _LOG.info("sim: firmware RUNNING -> STOPPING (STOP at %.2f km/h/s)", decel_kmh_s)
            self._state = FwState.STOPPING
            self._ramp_kmh_s = decel_kmh_s
        elif self._state in (FwState.STOPPING, FwState.FAULT):
            # A stop can only make an ongoing stop harder, never softer.
            self._ramp_kmh_s = max(self._ramp_kmh_s, decel_kmh_s)
        self._target_kmh = 0.0
        self._lease_deadline_ms = None

    def _on_clear_fault(self, seq: int) -> None:
        if self._state is not FwState.FAULT:
            self._answer(seq, Ack(seq=seq))  # nothing latched: nothing to do
            return
        if not self._at_rest():
            self._answer(seq, Nak(seq=seq, reason=NakReason.BELT_MOVING))
            return
        if not self._key_closed:
            self._answer(seq, Nak(seq=seq, reason=NakReason.REFUSED_IN_STATE))
            return
        _LOG.info("sim: firmware FAULT (%s) -> IDLE (CLEAR_FAULT)", self._fault.name)
        self._state = FwState.IDLE
        self._fault = FwFault.NONE
        # FW-7: clearing never restarts the belt.
        self._target_kmh = 0.0
        self._commanded_kmh = 0.0
        self._lease_deadline_ms = None
        self._contactor = False
        self._apply_power()
        self._answer(seq, Ack(seq=seq))

    # ------------------------------------------------------------------ output

    def _hello(self) -> Hello:
        cfg = self._config
        return Hello(
            protocol_version=cfg.protocol_version,
            fw_version=cfg.fw_version,
            reset_cause=self._reset_cause,
            max_speed_kmh=cfg.max_speed_kmh,
            max_accel_kmh_s=cfg.max_accel_kmh_s,
            boot_id=self._boot_id,
            uptime_ms=(self._now_ms - self._boot_ms) % _U32,
        )

    def _status(self) -> Status:
        self._statuses_sent += 1
        conf = self._configure
        return Status(
            measured_kmh=min(655.35, self.measured_kmh),
            commanded_kmh=min(30.0, self._commanded_kmh),
            state=self._state,
            fault=self._fault,
            safety_key_closed=self._key_closed,
            uptime_ms=(self._now_ms - self._boot_ms) % _U32,
            last_applied_seq=self._last_applied_seq,
            config_checksum=conf.config_checksum if conf is not None else 0,
            lease_remaining_ms=self.lease_remaining_ms,
        )

    def _answer(self, seq: int, msg: Ack | Nak) -> None:
        self._emit(msg)

    def _nak(self, seq: int, reason: NakReason) -> None:
        self._answer(seq, Nak(seq=seq, reason=reason))

    def _emit(self, msg: Message) -> None:
        frame = encode_frame(self._tx_seq.next(), msg)
        if self._drop_pct > 0 and self._rng.random() * 100.0 < self._drop_pct:
            self._frames_dropped += 1
            return
        self._out.append(frame)

    def _drain(self) -> bytes:
        if not self._out:
            return b""
        data = b"".join(self._out)
        self._out = []
        if self._corrupt_pct > 0:
            data = self._corrupt(data)
        return data

    def _corrupt(self, data: bytes) -> bytes:
        buf = bytearray(data)
        for i in range(len(buf)):
            if self._rng.random() * 100.0 < self._corrupt_pct:
                buf[i] ^= self._rng.randint(1, 255)
                self._bytes_corrupted += 1
        return bytes(buf)
