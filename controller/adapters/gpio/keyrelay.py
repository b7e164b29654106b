"""The key-circuit relay output (key-relay mode, SR-MON-*): one GPIO output, toggled.

The control loop toggles the output once per tick while the core allows motion
(``Decision.key_relay``). The output feeds a retriggerable monostable (or a charge pump)
that holds a relay in series with the treadmill's safety key; the relay drops out
``hold_off_ms`` after the last toggle (docs/install.md). A steady level, high or low, never
holds it: a loop that stops, hangs or decides to stop opens the key circuit. The output is
driven low when the adapter opens and when it closes.

``on_toggle`` observers are for the simulator only (a mock pin does not report an output's
changes).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from gpiozero import DigitalOutputDevice

from controller.errors import KeyRelayError

__all__ = ["KeyRelayError", "KeyRelayOutput"]

logger = logging.getLogger(__name__)


class KeyRelayOutput:
    """The relay drive output on one GPIO pin (gpiozero, injected pin factory)."""

    def __init__(self, pin: int, *, pin_factory: Any) -> None:
        self.toggles = 0
        self.on_toggle: Callable[[], None] | None = None
        try:
            self._device: Any = DigitalOutputDevice(
                pin, initial_value=False, pin_factory=pin_factory
            )
        except Exception as exc:
            raise KeyRelayError(
                f"cannot open the key-relay output on BCM pin {pin}: {exc}. Check "
                "drive.key_relay.pin in the config and that no other program uses the pin."
            ) from exc

    def toggle(self) -> None:
        """One edge: keeps the relay's monostable charged for another hold-off."""
        if self._device is None:
            return
        self._device.toggle()
        self.toggles += 1
        if self.on_toggle is not None:
            self.on_toggle()

    @property
    def value(self) -> bool:
        """The output level now."""
        return bool(self._device.value) if self._device is not None else False

    def close(self) -> None:
        """Drive the output low and release the pin. Idempotent."""
        device, self._device = self._device, None
        if device is not None:
            try:
                device.off()
                device.close()
            except Exception:  # closing must never mask the original error
                logger.debug("closing the key-relay output failed", exc_info=True)
