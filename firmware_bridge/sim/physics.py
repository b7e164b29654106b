"""Belt, motor board and speed sensor of the simulated treadmill.

Pure model: time comes in as integer milliseconds (``now_ms``) and randomness from an
injected :class:`random.Random`, so the same seed and the same calls give the same belt.

The chain modelled, from the firmware's output to what the firmware reads back:

1. **Motor board** (e.g. an MC2100): takes a speed set-point and ramps its own output toward
   it at ``motor_ramp_kmh_s``. With motor power cut (contactor open, safety key pulled) the
   output falls to zero at ``power_cut_decel_kmh_s`` whatever the set-point (the board is
   unpowered; its dynamic brake and the belt friction stop the belt). Two board faults can be
   simulated: *runaway* (the output climbs on its own) and *stuck* (the output stays put);
   neither survives a power cut.
2. **Belt**: a first-order lag with time constant ``belt_time_constant_ms`` toward the motor
   output, less the walker's load: at every foot strike the belt dips by ``walker_dip_frac``
   of its speed for ``walker_strike_ms``.
3. **Speed sensor**: one pulse every ``distance_per_pulse_mm`` of belt travel, each pulse time
   jittered by ``pulse_jitter_ms``. The default, 12.5 mm, is 20 magnets on a Taurus 9.5 front
   roller (250.9 mm a turn): a 0.5 km/h belt gives a pulse every 90 ms. One pulse per roller
   turn (250.9 mm) is too coarse for the controller's plausibility checks at stage 1 speeds:
   at 0.5 km/h it pulses every 1.8 s (docs/firmware-safety.md, FW-15). The reading is
   ``distance / period``; while no pulse has come for longer than the last period the reading
   is bounded by ``distance / time since the last pulse`` (the belt cannot be faster than
   that), and after ``stale_factor`` times the last period (at most ``stale_cap_ms``) the
   reading is stale and reads 0.

4. **The Pi's own belt sensor** (a second, independent channel on the other roller): one
   pulse every ``aux_distance_per_pulse_mm`` of *belt* travel. The pulse times are collected
   (:meth:`BeltPhysics.take_aux_pulses`) and handed to the controller's GPIO input; the
   controller computes the speed itself. It has its own faults: *frozen* (pulses keep coming
   at the period they had, whatever the belt does), *silent* (no more pulses: a cut wire, a
   lost magnet) and *noisy* (jittered pulses with contact bounce).

A **slipping belt** (:meth:`BeltPhysics.set_slip`) moves slower than the driven roller, on
which the firmware's sensor sits: the firmware reads the roller, the Pi's sensor the belt.
The firmware's own sensor can also fall *silent* (:meth:`BeltPhysics.set_sensor_silent`).

The true belt speed (:attr:`BeltPhysics.true_speed_kmh`) and the sensor reading
(:attr:`BeltPhysics.measured_kmh`) are kept apart so tests can compare them.
"""

from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import dataclass

__all__ = ["BeltPhysics", "PhysicsParams"]

#: km/h per (mm/ms): 1 mm/ms = 1 m/s = 3.6 km/h.
_KMH_PER_MM_PER_MS = 3.6
#: Integration step, ms. Pulses are interpolated inside a step, so 1 ms is plenty.
_STEP_MS = 1.0
#: Below this the belt is taken to be at rest (km/h); avoids endless exponential tails.
_REST_KMH = 1e-3


@dataclass(frozen=True)
class PhysicsParams:
    """Numbers of the simulated belt. Units are in the names."""

    belt_time_constant_ms: float = 150.0
    motor_ramp_kmh_s: float = 12.0  # the motor board's own ramp limit toward its set-point
    motor_top_kmh: float = 22.0  # the board cannot drive the belt faster than this
    power_cut_decel_kmh_s: float = 10.0  # motor power cut: dynamic brake + belt friction
    walker_on_belt: bool = True
    walker_dip_frac: float = 0.03  # speed lost at a foot strike, fraction of belt speed
    walker_step_period_ms: float = 650.0
    walker_strike_ms: float = 120.0
    distance_per_pulse_mm: float = 12.5  # 20 magnets on a Taurus 9.5 roller (250.9 mm a turn)
    pulse_jitter_ms: float = 0.5  # standard deviation of a pulse's timestamp
    noise_kmh: float = 0.01  # standard deviation of the reading's noise while moving
    stale_factor: float = 3.0  # no pulse for this many periods: reading is stale (0)
    stale_cap_ms: float = 2000.0  # ... but never wait longer than this
    gate_ms: float = 100.0  # the reading averages the pulse periods of this window
    aux_distance_per_pulse_mm: float = 62.7  # the Pi's sensor: 4 magnets on a 250.9 mm roller
    aux_pulse_jitter_ms: float = 0.05  # its timestamps: kernel edge stamps, a few us

    def __post_init__(self) -> None:
        positive = {
            "belt_time_constant_ms": self.belt_time_constant_ms,
            "motor_ramp_kmh_s": self.motor_ramp_kmh_s,
            "motor_top_kmh": self.motor_top_kmh,
            "power_cut_decel_kmh_s": self.power_cut_decel_kmh_s,
            "walker_step_period_ms": self.walker_step_period_ms,
            "distance_per_pulse_mm": self.distance_per_pulse_mm,
            "stale_factor": self.stale_factor,
            "stale_cap_ms": self.stale_cap_ms,
            "aux_distance_per_pulse_mm": self.aux_distance_per_pulse_mm,
        }
        for name, value in positive.items():
            if not value > 0:
                raise ValueError(f"PhysicsParams.{name} must be > 0, got {value!r}")
        non_negative = {
            "walker_dip_frac": self.walker_dip_frac,
            "walker_strike_ms": self.walker_strike_ms,
            "pulse_jitter_ms": self.pulse_jitter_ms,
            "noise_kmh": self.noise_kmh,
            "aux_pulse_jitter_ms": self.aux_pulse_jitter_ms,
        }
        for name, value in non_negative.items():
            if not value >= 0:
                raise ValueError(f"PhysicsParams.{name} must be >= 0, got {value!r}")
        if self.walker_dip_frac >= 1:
            raise ValueError(
                f"PhysicsParams.walker_dip_frac must be < 1, got {self.walker_dip_frac!r}"
            )

    def pulse_period_ms(self, speed_kmh: float) -> float:
        """Sensor pulse period at ``speed_kmh`` (ms); infinite at rest."""
        if speed_kmh <= 0:
            return math.inf
        return self.distance_per_pulse_mm * _KMH_PER_MM_PER_MS / speed_kmh


class BeltPhysics:
    """The belt, motor board and speed sensor, advanced explicitly with :meth:`advance`.

    >>> import random
    >>> belt = BeltPhysics(PhysicsParams(walker_on_belt=False), random.Random(1), now_ms=0)
    >>> belt.set_motor_power(True)
    >>> belt.set_setpoint(3.0)
    >>> belt.advance(5000)
    >>> round(belt.true_speed_kmh, 2)
    3.0
    """

    def __init__(self, params: PhysicsParams, rng: random.Random, *, now_ms: int = 0) -> None:
        self._params = params
        self._rng = rng
        self._now_ms = float(now_ms)
        self._setpoint_kmh = 0.0
        self._motor_power = False
        self._motor_kmh = 0.0
        self._belt_kmh = 0.0
        self._runaway_accel_kmh_s: float | None = None
        self._stuck = False
        self._frozen_kmh: float | None = None
        self._distance_mm = 0.0
        self._next_pulse_mm = params.distance_per_pulse_mm
        self._pulses = 0
        self._last_pulse_ms: float | None = None
        self._last_period_ms: float | None = None
        self._recent_pulses_ms: deque[float] = deque(maxlen=256)
        self._measured_kmh = 0.0
        self._sensor_quiet = True
        self._sensor_silent = False
        self._slip_frac = 0.0
        self._roller_mm = 0.0  # travel of the driven roller, where the firmware's sensor is
        self._roller_kmh = 0.0  # its surface speed: the belt's when nothing slips
        # The Pi's sensor has its own random source, so adding it changes nothing else.
        self._aux_rng = random.Random(0x5EC)  # noqa: S311 - a reproducible simulation
        self._aux_distance_per_pulse_mm = params.aux_distance_per_pulse_mm
        self._aux_distance_mm = 0.0
        self._aux_next_mm = params.aux_distance_per_pulse_mm
        self._aux_pending: deque[float] = deque(maxlen=4096)  # bounded when nobody reads
        self._aux_last_ms: float | None = None
        self._aux_period_ms: float | None = None
        self._aux_mode: str | None = None  # None, "frozen" or "silent"
        self._aux_frozen_period_ms: float | None = None
        self._aux_noise_pct = 0.0

    # ---------------------------------------------------------------- inputs

    def set_setpoint(self, speed_kmh: float) -> None:
        """Speed the motor board is asked for (km/h, >= 0)."""
        self._setpoint_kmh = max(0.0, speed_kmh)

    def set_motor_power(self, on: bool) -> None:
        """Close (``True``) or open the motor power contactor."""
        self._motor_power = on

    def set_runaway(self, accel_kmh_s: float | None) -> None:
        """Board fault: the output climbs at ``accel_kmh_s`` whatever it is asked (None: off)."""
        self._runaway_accel_kmh_s = accel_kmh_s

    def set_stuck(self, stuck: bool) -> None:
        """Board fault: the output stays where it is whatever it is asked."""
        self._stuck = stuck

    def set_sensor_frozen(self, frozen: bool) -> None:
        """Sensor fault: the reading stays at its present value."""
        self._frozen_kmh = self._measured_kmh if frozen else None

    def set_sensor_silent(self, silent: bool) -> None:
        """The firmware's sensor gives no more pulses (cut wire): its reading falls to 0."""
        self._sensor_silent = silent

    def set_slip(self, frac: float) -> None:
        """The belt slips on the driven roller: it moves at (1 - frac) of the roller's speed.
        The firmware's sensor (on that roller) reads the roller, the Pi's sensor the belt."""
        if not 0.0 <= frac < 1.0:
            raise ValueError(f"slip must be in [0, 1), got {frac!r}")
        self._slip_frac = frac

    def set_aux_distance_per_pulse(self, distance_mm: float) -> None:
        """Belt travel per pulse of the Pi's sensor (set to the controller's config)."""
        if not distance_mm > 0:
            raise ValueError(f"distance per pulse must be > 0, got {distance_mm!r}")
        self._aux_distance_per_pulse_mm = distance_mm
        self._aux_next_mm = self._aux_distance_mm + distance_mm

    def set_aux_fault(self, mode: str | None) -> None:
        """The Pi's sensor: ``"frozen"`` (pulses at the present period whatever the belt
        does), ``"silent"`` (no pulses), or None (healthy again)."""
        if mode not in (None, "frozen", "silent"):
            raise ValueError(f"belt sensor fault must be frozen, silent or None, got {mode!r}")
        self._aux_mode = mode
        self._aux_frozen_period_ms = self._aux_period_ms if mode == "frozen" else None

    def set_aux_noise(self, pct: float) -> None:
        """The Pi's sensor: each pulse jittered by ``pct`` % of its period (standard
        deviation) and, with ``pct`` % chance, followed by contact bounce 0.3 ms later."""
        if not 0.0 <= pct <= 100.0:
            raise ValueError(f"belt sensor noise must be 0..100 %, got {pct!r}")
        self._aux_noise_pct = pct

    def take_aux_pulses(self) -> list[float]:
        """Pulse times (ms) of the Pi's sensor since the last call, oldest first."""
        pulses = list(self._aux_pending)
        self._aux_pending.clear()
        return pulses

    # ---------------------------------------------------------------- outputs

    @property
    def params(self) -> PhysicsParams:
        return self._params

    @property
    def now_ms(self) -> float:
        """Time the model has been advanced to (ms)."""
        return self._now_ms

    @property
    def setpoint_kmh(self) -> float:
        return self._setpoint_kmh

    @property
    def motor_power(self) -> bool:
        return self._motor_power

    @property
    def motor_output_kmh(self) -> float:
        """The motor board's output (km/h of belt speed it drives toward)."""
        return self._motor_kmh

    @property
    def true_speed_kmh(self) -> float:
        """Actual belt speed (km/h): what a person on the belt feels."""
        return self._belt_kmh

    @property
    def measured_kmh(self) -> float:
        """What the speed sensor reads (km/h), as the firmware sees it."""
        if self._frozen_kmh is not None:
            return self._frozen_kmh
        return self._measured_kmh

    @property
    def sensor_quiet(self) -> bool:
        """True when the sensor shows no sign of motion: no pulse within the stale window
        (``stale_factor`` periods, at most ``stale_cap_ms``; ``stale_cap_ms`` after a lone
        pulse). A reading of 0 alone is not enough: right after a start the belt moves for
        up to two pulses before there is a period to read. A frozen sensor shows what it
        froze at.
        """
        if self._frozen_kmh is not None:
            return self._frozen_kmh == 0.0
        return self._sensor_quiet

    @property
    def distance_m(self) -> float:
        """Belt travel since start (m)."""
        return self._distance_mm / 1000.0

    @property
    def pulses(self) -> int:
        """Sensor pulses counted since start."""
        return self._pulses

    @property
    def runaway(self) -> bool:
        return self._runaway_accel_kmh_s is not None

    @property
    def stuck(self) -> bool:
        return self._stuck

    @property
    def sensor_frozen(self) -> bool:
        return self._frozen_kmh is not None

    @property
    def sensor_silent(self) -> bool:
        return self._sensor_silent

    @property
    def slip_frac(self) -> float:
        return self._slip_frac

    @property
    def aux_fault(self) -> str | None:
        """The Pi's sensor fault in force: "frozen", "silent", "noisy" or None."""
        if self._aux_mode is not None:
            return self._aux_mode
        return "noisy" if self._aux_noise_pct > 0 else None

    @property
    def aux_speed_kmh(self) -> float:
        """Speed shown by the Pi's sensor's last period (for status lines; 0 without one)."""
        period = self._aux_period_ms
        if period is None:
            return 0.0
        return self._aux_distance_per_pulse_mm * _KMH_PER_MM_PER_MS / period

    # ---------------------------------------------------------------- model

    def advance(self, now_ms: float) -> None:
        """Advance the model to ``now_ms``. Earlier times are ignored (time never runs back)."""
        while self._now_ms < now_ms:
            dt_ms = min(_STEP_MS, now_ms - self._now_ms)
            self._step(dt_ms)
        self._measured_kmh = self._read_sensor()

    def _step(self, dt_ms: float) -> None:
        p = self._params
        start_ms = self._now_ms
        end_ms = start_ms + dt_ms
        dt_s = dt_ms / 1000.0

        # 1. Motor board output.
        if not self._motor_power:
            self._motor_kmh = max(0.0, self._motor_kmh - p.power_cut_decel_kmh_s * dt_s)
        elif self._runaway_accel_kmh_s is not None:
            self._motor_kmh = min(
                p.motor_top_kmh, self._motor_kmh + self._runaway_accel_kmh_s * dt_s
            )
        elif not self._stuck:
            target = min(self._setpoint_kmh, p.motor_top_kmh)
            step = p.motor_ramp_kmh_s * dt_s
            if self._motor_kmh < target:
                self._motor_kmh = min(target, self._motor_kmh + step)
            else:
                self._motor_kmh = max(target, self._motor_kmh - step)

        # 2. Belt: first-order lag toward the motor output less the walker's load (and less
        # the slip on the driven roller).
        roller_drive_kmh = self._motor_kmh * (1.0 - self._walker_dip(end_ms))
        drive_kmh = roller_drive_kmh * (1.0 - self._slip_frac)
        before_kmh = self._belt_kmh
        after_kmh = self._lag(before_kmh, drive_kmh, dt_ms)
        self._belt_kmh = after_kmh
        # The driven roller turns with the motor; a slipping belt lags behind it.
        roller_before_kmh = self._roller_kmh
        roller_after_kmh = self._lag(roller_before_kmh, roller_drive_kmh, dt_ms)
        self._roller_kmh = roller_after_kmh

        # 3. Distance and sensor pulses (interpolated within the step).
        speed_mm_ms_0 = before_kmh / _KMH_PER_MM_PER_MS
        speed_mm_ms_1 = after_kmh / _KMH_PER_MM_PER_MS
        travelled_mm = 0.5 * (speed_mm_ms_0 + speed_mm_ms_1) * dt_ms
        # The firmware's sensor counts the driven roller, which turns faster than a slipping
        # belt moves.
        rolled_mm = 0.5 * (roller_before_kmh + roller_after_kmh) / _KMH_PER_MM_PER_MS * dt_ms
        new_roller_mm = self._roller_mm + rolled_mm
        while new_roller_mm >= self._next_pulse_mm and rolled_mm > 0:
            frac = (self._next_pulse_mm - self._roller_mm) / rolled_mm
            pulse_ms = start_ms + frac * dt_ms
            if p.pulse_jitter_ms > 0:
                pulse_ms += self._rng.gauss(0.0, p.pulse_jitter_ms)
            if not self._sensor_silent:
                self._record_pulse(min(pulse_ms, end_ms))
            self._next_pulse_mm += p.distance_per_pulse_mm
        self._roller_mm = new_roller_mm
        self._aux_step(start_ms, dt_ms, travelled_mm)
        self._distance_mm += travelled_mm
        self._now_ms = end_ms

    def _lag(self, before_kmh: float, drive_kmh: float, dt_ms: float) -> float:
        """First-order lag toward ``drive_kmh``; braked when unpowered; 0 at rest."""
        p = self._params
        alpha = 1.0 - math.exp(-dt_ms / p.belt_time_constant_ms)
        after_kmh = before_kmh + (drive_kmh - before_kmh) * alpha
        if not self._motor_power:
            # Unpowered, the belt is braked and never faster than the decaying drive.
            decel_kmh = p.power_cut_decel_kmh_s * dt_ms / 1000.0
            after_kmh = min(after_kmh, max(0.0, before_kmh - decel_kmh))
        if after_kmh < _REST_KMH and drive_kmh < _REST_KMH:
            after_kmh = 0.0
        return after_kmh

    def _aux_step(self, start_ms: float, dt_ms: float, travelled_mm: float) -> None:
        """Pulses of the Pi's own belt sensor within one step (on belt travel)."""
        end_ms = start_ms + dt_ms
        if self._aux_mode == "frozen":
            period = self._aux_frozen_period_ms
            last = self._aux_last_ms
            while period is not None and last is not None and last + period <= end_ms:
                last += period
                self._aux_pending.append(last)
            self._aux_last_ms = last
            self._aux_distance_mm += travelled_mm
            self._aux_next_mm = self._aux_distance_mm + self._aux_distance_per_pulse_mm
            return
        new_mm = self._aux_distance_mm + travelled_mm
        while new_mm >= self._aux_next_mm and travelled_mm > 0:
            frac = (self._aux_next_mm - self._aux_distance_mm) / travelled_mm
            self._aux_pulse(start_ms + frac * dt_ms)
            self._aux_next_mm += self._aux_distance_per_pulse_mm
        self._aux_distance_mm = new_mm

    def _aux_pulse(self, pulse_ms: float) -> None:
        rng = self._aux_rng
        p = self._params
        last = self._aux_last_ms
        if last is not None:
            self._aux_period_ms = pulse_ms - last
        self._aux_last_ms = pulse_ms
        if self._aux_mode == "silent":
            return
        stamp_ms = pulse_ms
        if p.aux_pulse_jitter_ms > 0:
            stamp_ms += rng.gauss(0.0, p.aux_pulse_jitter_ms)
        noise = self._aux_noise_pct / 100.0
        if noise > 0 and self._aux_period_ms is not None:
            stamp_ms += rng.gauss(0.0, noise * self._aux_period_ms)
        if self._aux_pending:
            stamp_ms = max(stamp_ms, self._aux_pending[-1] + 0.1)
        self._aux_pending.append(stamp_ms)
        if noise > 0 and rng.random() < noise:
            self._aux_pending.append(stamp_ms + 0.3)  # contact bounce

    def _walker_dip(self, now_ms: float) -> float:
        p = self._params
        if not p.walker_on_belt or p.walker_dip_frac <= 0 or p.walker_strike_ms <= 0:
            return 0.0
        phase_ms = now_ms % p.walker_step_period_ms
        if phase_ms >= p.walker_strike_ms:
            return 0.0
        return p.walker_dip_frac * math.sin(math.pi * phase_ms / p.walker_strike_ms)

    def _record_pulse(self, pulse_ms: float) -> None:
        self._pulses += 1
        last = self._last_pulse_ms
        if last is not None:
            # Jitter must never make a period zero or negative.
            pulse_ms = max(pulse_ms, last + 0.1)
            self._last_period_ms = pulse_ms - last
        self._last_pulse_ms = pulse_ms
        self._recent_pulses_ms.append(pulse_ms)

    def _read_sensor(self) -> float:
        p = self._params
        last = self._last_pulse_ms
        period = self._last_period_ms
        if last is None:
            self._sensor_quiet = True
            return 0.0
        since_ms = max(0.0, self._now_ms - last)
        if period is None:
            # One pulse since rest: no period yet, so no reading, but the belt may be moving.
            if since_ms > p.stale_cap_ms:
                self._last_pulse_ms = None
                self._sensor_quiet = True
            else:
                self._sensor_quiet = False
            return 0.0
        if since_ms > min(p.stale_factor * period, p.stale_cap_ms):
            # Stale: report rest and need two fresh pulses for the next reading.
            self._last_pulse_ms = None
            self._last_period_ms = None
            self._recent_pulses_ms.clear()
            self._sensor_quiet = True
            return 0.0
        self._sensor_quiet = False
        # Like a firmware that counts pulses over a gate time: average the periods of the
        # pulses in the last gate_ms, so one jittered pulse moves the reading little.
        recent = self._recent_pulses_ms
        while len(recent) > 2 and recent[0] < last - p.gate_ms:
            recent.popleft()
        if len(recent) >= 3:
            period = (recent[-1] - recent[0]) / (len(recent) - 1)
        speed_kmh = p.distance_per_pulse_mm * _KMH_PER_MM_PER_MS / max(period, since_ms)
        if p.noise_kmh > 0:
            speed_kmh += self._rng.gauss(0.0, p.noise_kmh)
        return max(0.0, speed_kmh)
