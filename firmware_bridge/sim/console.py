"""A treadmill driven by its own console, guarded by the Pi's key-circuit relay (simulated).

Key-relay (monitor) mode: the belt is driven by a commercial treadmill's own console (a
person presses its START, STOP and speed keys); the Pi cannot set the speed. It holds a
relay in series with the treadmill's safety key, and keeps it closed only by toggling a GPIO
output every control tick. The simulator models the three parts:

* :class:`KeyRelay`: a retriggerable monostable (or charge pump) driving the relay. It pulls
  in after ``pull_in_toggles`` toggles spaced no more than ``hold_off_ms`` apart, and drops
  out ``hold_off_ms`` after the last toggle: a loop that stops, hangs or decides to stop
  opens the key circuit within ``hold_off_ms`` (plus the relay's own release time,
  ``release_ms``). With the Pi off the relay is open: the belt cannot run.
* :class:`ConsoleTreadmill`: the treadmill's console. Its key circuit is the safety key in
  series with the relay. While the circuit is closed, START starts the belt at the console's
  start speed and the speed keys step it up and down, ramped at ``console_accel_kmh_s``;
  when the circuit opens the motor power is cut (the belt brakes at the belt model's
  power-cut deceleration) and the console forgets its speed, like a real treadmill whose key
  is pulled: the belt stays stopped until the circuit is closed *and* START is pressed again.
* the belt and the Pi's belt sensor: :class:`~firmware_bridge.sim.physics.BeltPhysics`.

Pure and deterministic: time comes in as ``now_ms``; randomness from an injected RNG.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from firmware_bridge.sim.firmware import SimFault
from firmware_bridge.sim.physics import BeltPhysics, PhysicsParams

__all__ = ["ConsoleParams", "ConsoleSimulator", "ConsoleTreadmill", "KeyRelay"]


@dataclass(frozen=True)
class ConsoleParams:
    """The simulated console and relay. Units are in the names."""

    start_kmh: float = 1.0  # the console starts the belt at this speed
    step_kmh: float = 0.5  # one press of its + or - key
    max_kmh: float = 16.0  # the treadmill's own ceiling
    console_accel_kmh_s: float = 1.0  # its own ramp
    hold_off_ms: float = 100.0  # the monostable's hold-off: drop-out after the last toggle
    pull_in_toggles: int = 3  # toggles needed to charge the pump and pull the relay in
    release_ms: float = 10.0  # the relay's own release (contact opening) time
    physics: PhysicsParams = field(default_factory=PhysicsParams)


class KeyRelay:
    """A retriggerable monostable driving the key-circuit relay.

    >>> relay = KeyRelay(hold_off_ms=100, pull_in_toggles=3, release_ms=10)
    >>> for t in (0, 20, 40):
    ...     relay.toggle(t)
    >>> relay.closed(50), relay.closed(140), relay.closed(151)
    (True, True, False)
    """

    def __init__(self, *, hold_off_ms: float, pull_in_toggles: int, release_ms: float) -> None:
        self._hold_off_ms = hold_off_ms
        self._pull_in = pull_in_toggles
        self._release_ms = release_ms
        self._last_toggle_ms: float | None = None
        self._run = 0  # toggles in a row, each within hold_off_ms of the one before
        self.toggles = 0

    def toggle(self, now_ms: float) -> None:
        """The Pi's output changed level at ``now_ms``."""
        last = self._last_toggle_ms
        if last is None or now_ms - last > self._hold_off_ms:
            self._run = 0
        self._run += 1
        self._last_toggle_ms = now_ms
        self.toggles += 1

    def closed(self, now_ms: float) -> bool:
        """The relay contact is closed at ``now_ms``."""
        last = self._last_toggle_ms
        if last is None or self._run < self._pull_in:
            return False
        return now_ms - last <= self._hold_off_ms + self._release_ms

    def opens_at_ms(self) -> float | None:
        """When the contact opens if no further toggle comes (None: open already)."""
        if self._last_toggle_ms is None or self._run < self._pull_in:
            return None
        return self._last_toggle_ms + self._hold_off_ms + self._release_ms


class ConsoleTreadmill:
    """A console-driven treadmill with a key circuit: safety key in series with the relay."""

    def __init__(self, params: ConsoleParams, rng: random.Random, *, now_ms: int = 0) -> None:
        self._params = params
        self.physics = BeltPhysics(params.physics, rng, now_ms=now_ms)
        self.relay = KeyRelay(
            hold_off_ms=params.hold_off_ms,
            pull_in_toggles=params.pull_in_toggles,
            release_ms=params.release_ms,
        )
        self._now_ms = float(now_ms)
        self._key_closed = True
        self._running = False
        self._target_kmh = 0.0
        self._setpoint_kmh = 0.0
        self._runaway_accel_kmh_s: float | None = None
        self.circuit_opened_ms: float | None = None  # last time the key circuit opened

    @property
    def params(self) -> ConsoleParams:
        return self._params

    @property
    def key_circuit_closed(self) -> bool:
        """Safety key in and relay closed: the motor may have power."""
        return self._key_closed and self.relay.closed(self._now_ms)

    @property
    def running(self) -> bool:
        """The console has started the belt (and its key circuit is closed)."""
        return self._running

    @property
    def target_kmh(self) -> float:
        return self._target_kmh

    @property
    def true_speed_kmh(self) -> float:
        return self.physics.true_speed_kmh

    def set_safety_key(self, closed: bool, now_ms: float) -> None:
        self.advance(now_ms)
        self._key_closed = closed
        self.advance(now_ms)

    def toggle_relay(self, now_ms: float) -> None:
        """The Pi toggled its relay output at ``now_ms``."""
        self.advance(now_ms)
        self.relay.toggle(now_ms)

    def press(self, key: str, now_ms: float) -> None:
        """A person presses the console's ``start``, ``stop``, ``faster`` or ``slower``."""
        self.advance(now_ms)
        p = self._params
        if key == "start":
            if self.key_circuit_closed and not self._running:
                self._running = True
                self._target_kmh = p.start_kmh
        elif key == "stop":
            self._running = False
            self._target_kmh = 0.0
        elif key == "faster":
            if self._running:
                self._target_kmh = min(p.max_kmh, self._target_kmh + p.step_kmh)
        elif key == "slower":
            if self._running:
                self._target_kmh = max(p.start_kmh, self._target_kmh - p.step_kmh)
        else:
            raise ValueError(f"console key {key!r}: use start, stop, faster or slower")

    def set_target(self, speed_kmh: float, now_ms: float) -> None:
        """Hold the console's + key until ``speed_kmh`` (clamped to its own range)."""
        self.advance(now_ms)
        if self._running:
            self._target_kmh = max(self._params.start_kmh, min(self._params.max_kmh, speed_kmh))

    def set_runaway(self, accel_kmh_s: float | None) -> None:
        """The console's motor board runs away (power still cut by the key circuit)."""
        self._runaway_accel_kmh_s = accel_kmh_s
        self.physics.set_runaway(accel_kmh_s)

    def advance(self, now_ms: float) -> None:
        """Advance the console, the relay and the belt to ``now_ms`` (1 ms steps)."""
        while self._now_ms < now_ms:
            step_to = min(now_ms, self._now_ms + 1.0)
            self._step(step_to)

    def _step(self, now_ms: float) -> None:
        dt_s = (now_ms - self._now_ms) / 1000.0
        self._now_ms = now_ms
        closed = self.key_circuit_closed
        if not closed:
            if self._running or self._target_kmh > 0.0:
                self.circuit_opened_ms = now_ms
            # A real console drops out when its key circuit opens: START again to restart.
            self._running = False
            self._target_kmh = 0.0
            self._setpoint_kmh = 0.0
        elif self._setpoint_kmh != self._target_kmh:
            step = self._params.console_accel_kmh_s * dt_s
            if self._setpoint_kmh < self._target_kmh:
                self._setpoint_kmh = min(self._target_kmh, self._setpoint_kmh + step)
            else:
                self._setpoint_kmh = max(self._target_kmh, self._setpoint_kmh - step)
        physics = self.physics
        physics.set_motor_power(closed and (self._running or self._setpoint_kmh > 0.0))
        physics.set_setpoint(self._setpoint_kmh)
        physics.advance(now_ms)


def _monotonic_ms() -> int:
    return time.monotonic_ns() // 1_000_000


class ConsoleSimulator:
    """A console-driven treadmill in the running event loop (async context manager).

    The service's key-relay output calls :meth:`relay_toggled`; the simulated Pi belt sensor's
    pulses go to the sink given to :meth:`attach_belt_sensor`, like
    :class:`~firmware_bridge.sim.pty.PtySimulator` does. :attr:`firmware` is the console
    treadmill (it has ``true_speed_kmh``), so observers read it the same way.
    """

    def __init__(
        self,
        params: ConsoleParams | None = None,
        *,
        seed: int = 0,
        clock_ms: Callable[[], int] = _monotonic_ms,
        tick_ms: int = 5,
    ) -> None:
        self._clock_ms = clock_ms
        self._tick_ms = tick_ms
        rng = random.Random(seed)  # noqa: S311 - a reproducible simulation, not cryptography
        self.console = ConsoleTreadmill(params or ConsoleParams(), rng, now_ms=clock_ms())
        self._sink: Callable[[list[float]], None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._output_stuck_until_ms = -1

    @property
    def firmware(self) -> ConsoleTreadmill:
        """The simulated treadmill, advanced to now (named like PtySimulator's for the
        service's observers, which read ``true_speed_kmh``)."""
        self.console.advance(self._clock_ms())
        return self.console

    async def __aenter__(self) -> ConsoleSimulator:
        self._task = asyncio.get_running_loop().create_task(
            self._tick_loop(), name="sim-console-tick"
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def attach_belt_sensor(
        self, distance_per_pulse_mm: float, sink: Callable[[list[float]], None]
    ) -> None:
        """Wire the simulated Pi belt sensor (see PtySimulator.attach_belt_sensor)."""
        self.console.physics.set_aux_distance_per_pulse(distance_per_pulse_mm)
        self.console.physics.take_aux_pulses()
        self._sink = sink

    def relay_toggled(self) -> None:
        """The service toggled its key-relay output now."""
        now_ms = self._clock_ms()
        if now_ms < self._output_stuck_until_ms:
            return
        self.console.toggle_relay(now_ms)

    def hang_output(self, duration_ms: int) -> None:
        """The controller hangs for ``duration_ms``: no toggle reaches the relay meanwhile.

        This models what a hung control loop does to the relay (its output stops changing)
        without blocking the event loop, so other scenarios running alongside are not held
        up; the real hang (``kill -STOP``) is a commissioning step (docs/install.md).
        """
        self._output_stuck_until_ms = self._clock_ms() + duration_ms

    def set_safety_key(self, closed: bool) -> None:
        """The treadmill's own safety key (in series with the relay)."""
        self.console.set_safety_key(closed, self._clock_ms())

    def press(self, key: str) -> None:
        """A person presses a key of the treadmill's console."""
        self.console.press(key, self._clock_ms())

    def set_target(self, speed_kmh: float) -> None:
        """A person holds the console's + key until ``speed_kmh``."""
        self.console.set_target(speed_kmh, self._clock_ms())

    async def inject(self, fault: SimFault, **params: Any) -> None:
        """Faults of the belt and the Pi's sensor, and a runaway of the console's motor board."""
        physics = self.console.physics
        if fault is SimFault.RUNAWAY:
            self.console.set_runaway(float(params.get("accel_kmh_s") or 0.5))
        elif fault is SimFault.BELT_SENSOR_FROZEN:
            physics.set_aux_fault("frozen")
        elif fault is SimFault.BELT_SENSOR_SILENT:
            physics.set_aux_fault("silent")
        elif fault is SimFault.BELT_SENSOR_NOISY:
            physics.set_aux_noise(float(params.get("pct") or 10.0))
        elif fault is SimFault.BELT_SLIP:
            physics.set_slip(min(float(params.get("pct") or 10.0), 95.0) / 100.0)
        else:
            raise ValueError(
                f"{fault.value} is a fault of our firmware or its link: the console-driven "
                "treadmill has neither"
            )

    async def clear(self, fault: SimFault) -> None:
        physics = self.console.physics
        if fault is SimFault.RUNAWAY:
            self.console.set_runaway(None)
        elif fault in (SimFault.BELT_SENSOR_FROZEN, SimFault.BELT_SENSOR_SILENT):
            physics.set_aux_fault(None)
        elif fault is SimFault.BELT_SENSOR_NOISY:
            physics.set_aux_noise(0.0)
        elif fault is SimFault.BELT_SLIP:
            physics.set_slip(0.0)

    async def _tick_loop(self) -> None:
        period_s = self._tick_ms / 1000.0
        while True:
            self.console.advance(self._clock_ms())
            pulses = self.console.physics.take_aux_pulses()
            if pulses and self._sink is not None:
                self._sink(pulses)
            await asyncio.sleep(period_s)
