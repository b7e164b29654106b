"""The Pi's own belt sensor: a second, independent belt-speed channel (gpiozero).

A reed or open-collector hall sensor on a roller gives one pulse per magnet. The speed is
measured from the time between pulses on the **pin factory's clock** (gpiozero's ``ticks``,
the kernel's edge timestamps with lgpio, ``time.monotonic`` with mock pins), not from when
the control loop happens to look, so a slow belt is measured as well as the number of magnets
allows and the loop's jitter does not enter the reading.

Two parts, as everywhere at the edge:

* :class:`PulseSpeedEstimator` is pure: it is fed edge times (seconds) and asked for a
  reading at a time; no GPIO, no clock. The tests drive it directly.
* :class:`BeltSensor` owns the gpiozero pin: ``pin.when_changed(ticks, state)`` is called on
  gpiozero's thread on real hardware (synchronously with mock pins); the estimator is shared
  with the control loop under a lock. :meth:`BeltSensor.read` gives the core's
  :class:`~controller.rules.model.BeltSensorReading`.

Example, on mock pins::

    >>> from gpiozero.pins.mock import MockFactory
    >>> sensor = BeltSensor(19, pin_factory=MockFactory(), active_high=False, pull="up",
    ...                     distance_per_pulse_mm=62.7, debounce_ms=2.0, stale_ms=1000)
    >>> for t in (0.0, 0.1, 0.2):
    ...     sensor.edge(t, active=True)
    >>> round(sensor.read(now_s=0.21).speed_kmh, 2)  # 62.7 mm every 100 ms
    2.26
    >>> sensor.close()
"""

from __future__ import annotations

import logging
import math
import threading
from typing import Any

from controller.errors import BeltSensorError
from controller.rules.model import BeltSensorReading

__all__ = ["BeltSensor", "BeltSensorError", "PulseSpeedEstimator"]

logger = logging.getLogger(__name__)

#: km/h per (mm/ms): 1 mm/ms = 1 m/s = 3.6 km/h.
KMH_PER_MM_PER_MS = 3.6


class PulseSpeedEstimator:
    """Belt speed from pulse times (seconds on one monotonic clock). Pure; not thread-safe.

    * A pulse closer than ``debounce_ms`` to the last accepted one is bounce and ignored.
    * The reading is ``distance / last period``, bounded by ``distance / time since the last
      pulse`` (the belt cannot have been faster than that on average), so a sensor that falls
      silent reads lower and lower.
    * No pulse for ``stale_ms``: the reading is 0 and the next reading needs two fresh pulses.

    Periods come from the edge timestamps (``edge_s``). The time since the last pulse is
    asked on another clock (the factory's ``ticks()``, ``arrived_s``), which with lgpio may
    not be the one the kernel stamps edges with. The offset between the two is estimated as
    the smallest ``arrived_s - edge_s`` seen (the clock offset plus the shortest delivery
    delay), so a batch of pulses delivered late (a busy or hung process) is seen as old, and
    the remaining error (the shortest delivery delay) makes the bound err high, on the safe
    side.
    """

    def __init__(self, *, distance_per_pulse_mm: float, debounce_ms: float, stale_ms: int) -> None:
        if not distance_per_pulse_mm > 0:
            raise ValueError(f"distance_per_pulse_mm must be > 0, got {distance_per_pulse_mm!r}")
        self._distance_mm = distance_per_pulse_mm
        self._debounce_s = debounce_ms / 1000.0
        self._stale_s = stale_ms / 1000.0
        self._last_s: float | None = None  # edge time of the last accepted pulse
        self._offset_s: float | None = None  # smallest arrival - edge seen
        self._period_s: float | None = None
        self.pulses = 0
        self.bounces = 0

    def pulse(self, edge_s: float, arrived_s: float | None = None) -> None:
        """A pulse (the sensor's active edge) stamped ``edge_s``, seen at ``arrived_s``
        (default: the same time, as with mock pins)."""
        last = self._last_s
        if last is not None:
            gap_s = edge_s - last
            if gap_s < self._debounce_s or gap_s <= 0.0:
                self.bounces += 1
                return
            self._period_s = gap_s if gap_s <= self._stale_s else None
        self._last_s = edge_s
        offset_s = 0.0 if arrived_s is None else arrived_s - edge_s
        if self._offset_s is None or offset_s < self._offset_s:
            self._offset_s = offset_s
        self.pulses += 1

    def _since_s(self, now_s: float) -> float | None:
        if self._last_s is None or self._offset_s is None:
            return None
        return now_s - (self._last_s + self._offset_s)

    def speed_kmh(self, now_s: float) -> float:
        """The belt speed at ``now_s`` (km/h, >= 0)."""
        since = self._since_s(now_s)
        period = self._period_s
        if since is None or period is None:
            return 0.0
        since_s = max(0.0, since)
        if since_s > self._stale_s:
            self._period_s = None
            return 0.0
        return self._distance_mm * KMH_PER_MM_PER_MS / (max(period, since_s) * 1000.0)

    def since_pulse_ms(self, now_s: float) -> int | None:
        """Milliseconds since the last accepted pulse; None before the first."""
        since = self._since_s(now_s)
        if since is None:
            return None
        return max(0, round(since * 1000.0))


class BeltSensor:
    """The belt sensor on one GPIO pin, read through gpiozero's pin API.

    ``active_high`` is the level while a magnet passes (a pulse starts at that edge);
    ``pull`` the Pi's internal resistor (``up``, ``down`` or ``none``). The pin factory is
    injected (``lgpio`` on a Pi, ``MockFactory`` in tests and the simulator).
    """

    def __init__(
        self,
        pin: int,
        *,
        pin_factory: Any,
        active_high: bool,
        pull: str,
        distance_per_pulse_mm: float,
        debounce_ms: float,
        stale_ms: int,
    ) -> None:
        self._factory = pin_factory
        self._active_high = active_high
        self._lock = threading.Lock()
        self._estimator = PulseSpeedEstimator(
            distance_per_pulse_mm=distance_per_pulse_mm, debounce_ms=debounce_ms, stale_ms=stale_ms
        )
        self._pin: Any = None
        try:
            device_pin = pin_factory.pin(pin)
            device_pin.function = "input"
            device_pin.pull = {"up": "up", "down": "down"}.get(pull, "floating")
            device_pin.edges = "rising" if active_high else "falling"
            device_pin.when_changed = self._on_change
            self._pin = device_pin
        except Exception as exc:
            self.close()
            raise BeltSensorError(
                f"cannot open the belt sensor on BCM pin {pin}: {exc}. Check belt_sensor.pin "
                "in the config and that no other program uses the pin."
            ) from exc

    @property
    def pin(self) -> Any:
        """The gpiozero pin (the simulator drives a mock one)."""
        return self._pin

    def _on_change(self, ticks: Any, state: Any) -> None:
        # gpiozero's thread on real hardware. Only the active edge is a pulse.
        if bool(state) != self._active_high:
            return
        self.edge(self._seconds(ticks), active=True, arrived_s=self._seconds(self._factory.ticks()))

    def _seconds(self, ticks: Any) -> float:
        """Ticks of the factory's clock as seconds from an arbitrary origin."""
        return float(ticks)

    def edge(self, at_s: float, *, active: bool, arrived_s: float | None = None) -> None:
        """An edge stamped ``at_s`` seconds (``active``: a pulse), seen at ``arrived_s`` on
        the pin factory's ``ticks()`` clock (default ``at_s``)."""
        if not active:
            return
        with self._lock:
            self._estimator.pulse(at_s, arrived_s)

    def read(self, now_s: float | None = None) -> BeltSensorReading:
        """The reading now (``now_s`` on the factory's clock; default the factory's ticks)."""
        at_s = self._seconds(self._factory.ticks()) if now_s is None else now_s
        with self._lock:
            speed_kmh = self._estimator.speed_kmh(at_s)
            return BeltSensorReading(
                speed_kmh=speed_kmh if math.isfinite(speed_kmh) else math.nan,
                pulses=self._estimator.pulses,
                since_pulse_ms=self._estimator.since_pulse_ms(at_s),
            )

    @property
    def bounces(self) -> int:
        """Pulses ignored as bounce so far."""
        return self._estimator.bounces

    def close(self) -> None:
        """Release the pin. Idempotent."""
        pin, self._pin = self._pin, None
        if pin is not None:
            try:
                pin.when_changed = None
                pin.close()
            except Exception:  # closing must never mask the original error
                logger.debug("closing the belt sensor pin failed", exc_info=True)
