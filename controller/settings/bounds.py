"""Bounded numbers: :class:`Bound`, and the one table of the MQTT adapter's numbers.

:class:`Bound` is the range of a number as the config errors describe it; the schema's
``Range`` annotation (:mod:`controller.settings.schema`) is a :class:`Bound` that pydantic
checks.

The config schema (``mqtt`` section, :mod:`controller.settings.schema`) and the adapter's
own settings (:class:`controller.adapters.mqtt.settings.MqttSettings`) both read
:data:`MQTT_BOUNDS`, so a value the config accepts is never refused by the publisher and the
other way round. Entries with ``in_config=False`` are set by the service, not by the file
(the state heartbeat, the reconnect backoff) or come from other sections (the number of
stages, the machine's maximum speed); the adapter checks them all the same.

QoS is not a number here: each topic has its fixed QoS (docs/mqtt.md, "Topics").
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

__all__ = ["MQTT_BOUNDS", "Bound", "number_text"]


def number_text(value: float) -> str:
    """``10.0`` -> ``"10"``, ``0.05`` -> ``"0.05"``, ``1800000`` -> ``"1800000"``."""
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


@dataclass(frozen=True)
class Bound:
    """``low <= value <= high`` (``low < value`` when ``low_open``), in ``unit``."""

    low: float
    high: float
    unit: str = ""
    low_open: bool = False
    in_config: bool = True  # a key of the config's mqtt section

    def describe(self) -> str:
        """The allowed range as the config errors say it ("from 5 to 600 s")."""
        unit = f" {self.unit}" if self.unit else ""
        if self.low_open:
            return f"more than {number_text(self.low)} and at most {number_text(self.high)}{unit}"
        return f"from {number_text(self.low)} to {number_text(self.high)}{unit}"

    def contains(self, value: float) -> bool:
        """``value`` is a finite number within the bound."""
        if not math.isfinite(value):
            return False
        low_ok = value > self.low if self.low_open else value >= self.low
        return low_ok and value <= self.high


MQTT_BOUNDS: Final[Mapping[str, Bound]] = {
    # keys of the config's mqtt section
    "port": Bound(1, 65_535),
    "keepalive_s": Bound(5, 600, "s"),  # the broker sees a hung controller after 1.5 x this
    "state_rate_hz": Bound(0.2, 20.0, "Hz"),
    "measurement_interval_s": Bound(0.2, 60.0, "s"),
    "counter_interval_s": Bound(1.0, 600.0, "s"),
    "diagnostics_interval_s": Bound(5.0, 3600.0, "s"),
    "max_payload_bytes": Bound(256, 65_536, "bytes"),
    "event_queue_size": Bound(10, 10_000, "events"),
    # set by the service or taken from other sections
    "state_heartbeat_s": Bound(1.0, 3600.0, "s", in_config=False),
    "reconnect_min_s": Bound(0.01, 60.0, "s", in_config=False),
    "reconnect_max_s": Bound(0.01, 3600.0, "s", in_config=False),  # and >= reconnect_min_s
    "max_stage": Bound(1, 100, in_config=False),
    "max_speed_kmh": Bound(0.0, 100.0, "km/h", low_open=True, in_config=False),
}
"""Every bounded number of the MQTT adapter, by its key in the config / ``MqttSettings``."""
