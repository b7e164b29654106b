"""JSON payloads published on MQTT: the state snapshot and events.

Pure: no I/O, no clock (the wall-clock ``ts`` and the monotonic ``now_ms`` come in as
arguments), no logging. The field list is documented in docs/mqtt.md; Home Assistant's
discovery templates (:mod:`controller.adapters.mqtt.discovery`) read these fields, so a rename here
must change both and the document.

Every payload is JSON-safe: floats are rounded to 2 decimals, non-finite floats become
``null``, and anything that is not a JSON type is turned into its ``str``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Final

from controller.rules.core import firmware_fresh
from controller.rules.model import CoreState, Decision, Event, Inputs, SafetyConfig

__all__ = [
    "FLOAT_DECIMALS",
    "channels_agree",
    "diagnostics_payload",
    "event_payload",
    "grip_reading",
    "iso_utc",
    "key_relay_state",
    "state_payload",
]

FLOAT_DECIMALS: Final[int] = 2
_EVENT_RESERVED: Final[frozenset[str]] = frozenset({"ts", "kind", "message"})
_MAX_DEPTH: Final[int] = 8


def iso_utc(ts: datetime) -> str:
    """The one timestamp format of every payload: ISO 8601 in UTC with millisecond
    precision and a ``Z`` suffix (the session records use the same, see
    :func:`controller.training.sessions.iso_z`).

    >>> iso_utc(datetime(2025, 3, 1, 12, 30, 5, 123456, tzinfo=UTC))
    '2025-03-01T12:30:05.123Z'
    """
    if ts.tzinfo is None or ts.utcoffset() is None:
        msg = f"telemetry timestamps must be timezone-aware, got naive {ts!r}"
        raise ValueError(msg)
    return ts.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _json_value(value: object, depth: int = 0) -> object:
    """Make ``value`` JSON-safe: round floats, ``null`` for non-finite, ``str`` for others."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return round(value, FLOAT_DECIMALS) if math.isfinite(value) else None
    if depth >= _MAX_DEPTH:
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _json_value(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple | frozenset | set):
        items = sorted(value, key=str) if isinstance(value, frozenset | set) else value
        return [_json_value(v, depth + 1) for v in items]
    if isinstance(value, datetime):
        return iso_utc(value)
    return str(value)


def _rounded(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return round(value, FLOAT_DECIMALS)


def grip_reading(inputs: Inputs) -> str:
    """``"both"``, ``"left"``, ``"right"`` or ``"none"``: which rails are gripped."""
    if inputs.grip_left and inputs.grip_right:
        return "both"
    if inputs.grip_left:
        return "left"
    if inputs.grip_right:
        return "right"
    return "none"


def channels_agree(decision: Decision | None) -> bool | None:
    """Whether the two belt speed channels agree, as the core judged them at the last tick
    (``Decision.channels_agree``, SR-CHAN-2): ``False`` while they differ by more than the
    tolerance, ``True`` when both were compared and agreed, ``None`` when the core did not
    compare them (no ``belt_sensor``, key-relay mode, no usable firmware status or Pi reading)
    and before the first tick.
    """
    return None if decision is None else decision.channels_agree


def key_relay_state(safety: SafetyConfig, decision: Decision | None) -> str | None:
    """Key-relay mode: ``"closed"`` while the core holds the relay (``Decision.key_relay``:
    the output was toggled at the last tick, SR-MON-1), else ``"open"``; ``None`` when our
    firmware drives the belt. The relay has no feedback contact: this is what the Pi does,
    and the relay follows it within its hold-off."""
    if safety.key_relay is None:
        return None
    return "closed" if decision is not None and decision.key_relay else "open"


def state_payload(
    *,
    ts: datetime,
    now_ms: int,
    core: CoreState,
    inputs: Inputs,
    safety: SafetyConfig,
    belt_kmh: float | None,
    link: Mapping[str, object] | None,
    session: Mapping[str, object] | None,
    warnings: Iterable[str] = (),
    firmware_version: str | None = None,
    decision: Decision | None = None,
) -> dict[str, object]:
    """The retained ``<prefix>/state`` snapshot.

    ``ts`` is the wall-clock time of the tick (timezone-aware), ``now_ms`` the same
    instant on the monotonic clock the core uses; together they turn ``since_ms`` values
    into wall-clock times. ``belt_kmh`` is the independent belt sensor's reading, if
    there is one. ``link`` holds the serial link counters (left out when ``None``: MQTT
    sends them on the ``diagnostics`` topic), ``session`` the running
    training session (``elapsed_s``, ``distance_m``, ``remaining_s``, ``client_id``, ...)
    or ``None``. ``warnings`` are added to the core's own. ``firmware_version`` is the
    version the firmware announced in its HELLO. ``decision`` is the core's last
    :class:`~controller.rules.model.Decision` (``None`` before the first tick): the relay
    state and the channels' agreement are read from it.
    """
    stage_cfg = safety.stages[core.stage - 1] if 1 <= core.stage <= len(safety.stages) else None
    fw = inputs.firmware
    if fw is None:
        firmware: dict[str, object] = {
            "link": False,
            "age_ms": None,
            "state": None,
            "fault_code": None,
            "commanded_kmh": None,
            "version": firmware_version,
        }
    else:
        age_ms = now_ms - fw.received_ms
        firmware = {
            "link": firmware_fresh(fw, safety, now_ms),  # the core's definition (SR-STOP-5)
            "age_ms": age_ms,
            "state": fw.state.value,
            "fault_code": fw.fault_code,
            "commanded_kmh": _rounded(fw.commanded_kmh),
            "version": firmware_version,
        }
    fault: dict[str, object] | None = None
    if core.fault is not None:
        since = ts - timedelta(milliseconds=now_ms - core.fault.since_ms)
        fault = {
            "code": core.fault.code.value,
            "message": core.fault.message,
            "since": iso_utc(since),
            "stop": core.fault.stop.value,
        }
    all_warnings = sorted(set(core.warnings) | set(warnings))
    payload: dict[str, object] = {
        "ts": iso_utc(ts),
        "state": core.mode.value,
        "stage": core.stage,
        "stage_name": stage_cfg.name if stage_cfg is not None else None,
        "stage_max_kmh": _rounded(stage_cfg.max_kmh) if stage_cfg is not None else None,
        "stage_cap": inputs.stage_cap,
        "remote_stage_cap": core.remote_stage_cap,
        "speed_kmh": _rounded(fw.measured_kmh) if fw is not None else None,
        "belt_kmh": _rounded(belt_kmh),
        "belt_sensor_kmh": (
            _rounded(inputs.belt_sensor.speed_kmh) if inputs.belt_sensor is not None else None
        ),
        "channels_agree": channels_agree(decision),
        "drive_mode": "key_relay" if safety.key_relay is not None else "firmware",
        "key_relay": key_relay_state(safety, decision),
        "target_kmh": _rounded(core.target_kmh),
        "commanded_kmh": _rounded(core.commanded_kmh),
        "grip": grip_reading(inputs),
        "safety_key": inputs.safety_key_present,
        "estop": inputs.estop_pressed,
        "fault": fault,
        "stop_reason": core.stop_reason,
        "firmware": firmware,
        "session": _json_value(dict(session)) if session is not None else None,
        "warnings": all_warnings,
    }
    if link is not None:
        payload["link"] = _json_value(dict(link))
    return payload


def diagnostics_payload(*, ts: datetime, link: Mapping[str, object]) -> dict[str, object]:
    """The retained ``<prefix>/diagnostics`` payload: ``{ts, ...link}``, the serial link
    counters (``crc_errors``, ``retransmits``, ``reconnects``, ...), ``loop`` (control loop
    lateness) and ``mqtt`` (publisher counters)."""
    payload: dict[str, object] = {"ts": iso_utc(ts)}
    payload.update({str(k): _json_value(v) for k, v in link.items()})
    return payload


def event_payload(*, ts: datetime, event: Event) -> dict[str, object]:
    """The ``<prefix>/event`` payload: ``{ts, kind, message, **details}``.

    A detail named like one of the fixed fields is kept as ``detail_<name>``.
    """
    payload: dict[str, object] = {"ts": iso_utc(ts), "kind": event.kind, "message": event.message}
    for key, value in event.details.items():
        name = f"detail_{key}" if key in _EVENT_RESERVED else key
        payload[name] = _json_value(value)
    return payload
