"""GPIO inputs: handrail grips, e-stop, safety key, console buttons (gpiozero).

One :class:`PanelInputs` owns every input device. It is thin on purpose:

* it reads the *raw* level of each pin and turns it into a logical value using the
  wiring in the config (``active: high|low``), so the polarity lives in one place;
* edges are handed to the asyncio loop with ``loop.call_soon_threadsafe`` (gpiozero calls
  back from its own thread on real hardware, synchronously with mock pins);
* levels are *also* read every control tick (:meth:`PanelInputs.read`), so a dropped edge
  can never hide a state;
* grips are debounced asymmetrically (rule GPIO-1 in docs/safety.md): a release is reported
  at once, a touch only once it has been stable for ``grip_debounce_ms``. A chattering or
  broken grip sensor therefore reads as *not gripping*, which is the safe side;
* buttons produce one press per rising edge, with a short lockout against contact bounce.

The pin factory is injected (``lgpio`` on a Pi, ``MockFactory`` in tests and the demo).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from gpiozero import DigitalInputDevice
from gpiozero.pins.mock import MockFactory, MockPin

from controller.errors import GpioError
from controller.rules.model import Button

logger = logging.getLogger(__name__)

GRIP_INPUTS = ("grip_left", "grip_right")
SAFETY_INPUTS = ("estop", "safety_key")
BUTTON_INPUTS: tuple[str, ...] = tuple(b.value for b in Button)
OPTIONAL_INPUTS = ("trainer_key",)
BUTTON_LOCKOUT_MS = 150


@dataclass(frozen=True)
class InputSpec:
    """Wiring of one input: BCM pin, which level means *active*, and the pull resistor."""

    name: str
    pin: int
    active_high: bool
    pull: str  # "up" | "down" | "none"


@dataclass(frozen=True)
class PanelReading:
    """Logical input values at one instant, plus the button presses since the last read."""

    grip_left: bool
    grip_right: bool
    estop_pressed: bool
    safety_key_present: bool
    trainer_key: bool
    presses: tuple[Button, ...]
    held: frozenset[Button] = frozenset()  # buttons held down right now


class TimedMockPin(MockPin):  # type: ignore[misc]  # gpiozero ships no type information
    """A mock pin that a simulated sensor can drive at a given time on the factory's clock.

    gpiozero's mock pins stamp a change with ``time.monotonic()`` when it is driven; a
    simulated belt sensor knows when its pulse happened, which may be a few milliseconds
    before the simulator gets round to driving the pin. :meth:`drive_at` stamps the change
    with that time, as the kernel stamps a real edge.
    """

    _stamp_s: float | None = None
    _KEEP_STATES = 16  # mock pins log every change; keep the log short on a busy sensor

    def _change_state(self, value: Any) -> bool:
        changed = bool(super()._change_state(value))
        if changed and self._stamp_s is not None:
            self._last_change = self._stamp_s
        return changed

    def drive_at(self, high: bool, at_s: float) -> None:
        """Drive the input high or low, stamped ``at_s`` seconds (``time.monotonic`` clock)."""
        self._stamp_s = at_s
        try:
            if high:
                self.drive_high()
            else:
                self.drive_low()
        finally:
            self._stamp_s = None
        if len(self.states) > 4 * self._KEEP_STATES:
            del self.states[: -self._KEEP_STATES]


def mock_pin_factory(clock_s: Callable[[], float] | None = None) -> Any:
    """gpiozero's MockFactory with :class:`TimedMockPin` pins (the demo, tests, scenarios).

    ``clock_s`` replaces the factory's ``ticks()`` clock (``time.monotonic``), for runs on a
    virtual clock (``controller.tools.virtual_time``): the belt sensor then times its pulses on it.
    """
    factory = MockFactory(pin_class=TimedMockPin)
    if clock_s is not None:
        factory.ticks = clock_s  # shadows gpiozero's static ticks() for this factory only
    return factory


def make_pin_factory(name: str) -> Any:
    """Build the gpiozero pin factory named in the config (``lgpio`` or ``mock``).

    Raises :class:`GpioError` with a one-line explanation if it cannot be built
    (e.g. lgpio missing, no ``/dev/gpiochip*``).
    """
    if name == "mock":
        return mock_pin_factory()
    if name == "lgpio":
        try:
            # Imported lazily: it needs the lgpio C module, present only on a Pi.
            from gpiozero.pins.lgpio import LGPIOFactory  # noqa: PLC0415
        except ImportError as exc:
            raise GpioError(
                "gpio.pin_factory is lgpio but the lgpio module is not installed: "
                "run 'sudo apt install python3-lgpio' and create the venv with "
                "--system-site-packages (docs/install.md)"
            ) from exc
        try:
            return LGPIOFactory()
        except Exception as exc:  # lgpio raises its own error type for a missing chip
            raise GpioError(
                f"cannot open the GPIO chip ({exc}): is this a Raspberry Pi, and is the "
                "service user in the 'gpio' group? For a simulator set gpio.pin_factory: mock"
            ) from exc
    raise GpioError(f"unknown gpio.pin_factory {name!r}: use 'lgpio' or 'mock'")


class _Debounce:
    """Asymmetric debounce: False at once, True only after stable for ``hold_ms``."""

    def __init__(self, hold_ms: int) -> None:
        self._hold_ms = hold_ms
        self._raw = False
        self._raw_since_ms = 0
        self.value = False

    def update(self, raw: bool, now_ms: int) -> bool:
        if raw != self._raw:
            self._raw = raw
            self._raw_since_ms = now_ms
        if not raw:
            self.value = False
        elif now_ms - self._raw_since_ms >= self._hold_ms:
            self.value = True
        return self.value


class PanelInputs:
    """Every GPIO input of the treadmill console, read through gpiozero."""

    def __init__(
        self,
        specs: Iterable[InputSpec],
        *,
        pin_factory: Any,
        grip_debounce_ms: int,
        on_safety_edge: Callable[[], None],
        loop: asyncio.AbstractEventLoop,
        clock_ms: Callable[[], int],
    ) -> None:
        self._specs = {s.name: s for s in specs}
        missing = [n for n in (*GRIP_INPUTS, *SAFETY_INPUTS) if n not in self._specs]
        if missing:
            raise GpioError(f"gpio.inputs is missing {', '.join(missing)}")
        self._loop = loop
        self._clock_ms = clock_ms
        self._on_safety_edge = on_safety_edge
        self._devices: dict[str, Any] = {}
        self._presses: list[Button] = []
        self._last_press_ms: dict[Button, int] = {}
        self._button_level: dict[str, bool] = {}
        self._debounce = {n: _Debounce(grip_debounce_ms) for n in GRIP_INPUTS}
        self.edges = 0
        try:
            for spec in self._specs.values():
                pull_up: bool | None = {"up": True, "down": False}.get(spec.pull)
                device = DigitalInputDevice(
                    spec.pin,
                    pull_up=pull_up,
                    active_state=True if pull_up is None else None,
                    pin_factory=pin_factory,
                )
                self._devices[spec.name] = device
                device.when_activated = self._edge_callback(spec.name)
                device.when_deactivated = self._edge_callback(spec.name)
        except Exception as exc:
            self.close()
            if isinstance(exc, GpioError):
                raise
            raise GpioError(
                f"cannot open GPIO input {spec.name} on BCM pin {spec.pin}: {exc}. "
                "Check gpio.inputs in the config and that no other program uses the pin."
            ) from exc
        for name in BUTTON_INPUTS:
            if name in self._devices:
                self._button_level[name] = self._active(name)

    def _edge_callback(self, name: str) -> Callable[[], None]:
        def callback() -> None:
            # Runs on gpiozero's thread on real hardware (synchronously with mock pins):
            # capture the level now, then hand over to the loop.
            self._loop.call_soon_threadsafe(self._on_edge, name, self._active(name))

        return callback

    def _on_edge(self, name: str, active: bool) -> None:
        self.edges += 1
        if name in GRIP_INPUTS or name in SAFETY_INPUTS:
            self._on_safety_edge()
        elif name in self._button_level:
            # A press shorter than a control tick is still counted.
            self._button_edge(name, active, self._clock_ms())

    def _active(self, name: str) -> bool:
        device = self._devices.get(name)
        if device is None:
            return False
        raw_high = bool(device.pin.state)
        return raw_high == self._specs[name].active_high

    def pin(self, name: str) -> Any:
        """The gpiozero pin object of an input (tests and the mock panel drive it)."""
        return self._devices[name].pin

    def spec(self, name: str) -> InputSpec:
        return self._specs[name]

    def has(self, name: str) -> bool:
        return name in self._devices

    def _poll_button(self, name: str, now_ms: int) -> None:
        self._button_edge(name, self._active(name), now_ms)

    def _button_edge(self, name: str, active: bool, now_ms: int) -> None:
        if active and not self._button_level[name]:
            button = Button(name)
            last = self._last_press_ms.get(button)
            if last is None or now_ms - last >= BUTTON_LOCKOUT_MS:
                self._presses.append(button)
                self._last_press_ms[button] = now_ms
        self._button_level[name] = active

    def _poll_buttons(self, now_ms: int) -> None:
        for name in self._button_level:
            self._poll_button(name, now_ms)

    def read(self, now_ms: int) -> PanelReading:
        """Logical levels now, and the button presses since the previous read."""
        self._poll_buttons(now_ms)
        presses = tuple(self._presses)
        self._presses.clear()
        return PanelReading(
            grip_left=self._debounce["grip_left"].update(self._active("grip_left"), now_ms),
            grip_right=self._debounce["grip_right"].update(self._active("grip_right"), now_ms),
            estop_pressed=self._active("estop"),
            safety_key_present=self._active("safety_key"),
            trainer_key=self._active("trainer_key"),
            presses=presses,
            held=frozenset(Button(n) for n, level in self._button_level.items() if level),
        )

    def close(self) -> None:
        """Release every pin. Idempotent."""
        for device in self._devices.values():
            try:
                device.close()
            except Exception:  # closing must never mask the original error
                logger.debug("closing a GPIO device failed", exc_info=True)
        self._devices.clear()
