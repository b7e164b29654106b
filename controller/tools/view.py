"""The terminal view of one treadmill, shared by ``treadmill demo`` and ``treadmill monitor``.

Pure: no I/O, no clock. Both commands build a :class:`TreadmillView` from the ``state``
payload the service publishes (:func:`controller.adapters.mqtt.telemetry.state_payload`, fields in
docs/mqtt.md) and render it either as a full screen (:func:`render_screen`, redrawn in place
with ANSI cursor movement) or as one plain line (:func:`render_line`, for logs, pipes and the
monitor's one-line-per-treadmill list).

>>> view = view_from_state({"state": "running", "stage": 1, "belt_kmh": 1.5,
...                         "speed_kmh": 1.48, "target_kmh": 2.0, "commanded_kmh": 1.5,
...                         "grip": "both", "safety_key": True, "estop": False})
>>> render_line(view)  # doctest: +NORMALIZE_WHITESPACE
'RUNNING fault - | e-stop released key in grip both | stage 1 belt 1.50 km/h
 (measured 1.48, commanded 1.50, target 2.00)'
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from controller.rules.model import GripLossAction, StageConfig

__all__ = [
    "StageLimits",
    "TreadmillView",
    "ViewEvent",
    "gauge",
    "render_line",
    "render_screen",
    "stage_limits",
    "view_from_state",
    "wrap_line",
]

GAUGE_WIDTH: Final[int] = 40
"""Characters of the speed bars in the full screen."""

CLEAR_TO_EOL: Final[str] = "\x1b[K"
CURSOR_HOME: Final[str] = "\x1b[H"
CLEAR_BELOW: Final[str] = "\x1b[J"
HIDE_CURSOR: Final[str] = "\x1b[?25l"
SHOW_CURSOR: Final[str] = "\x1b[?25h"

_BOLD: Final[str] = "\x1b[1m"
_RED: Final[str] = "\x1b[31m"
_GREEN: Final[str] = "\x1b[32m"
_YELLOW: Final[str] = "\x1b[33m"
_RESET: Final[str] = "\x1b[0m"

_GRIP_POLICY_TEXT: Final[Mapping[GripLossAction, str]] = {
    GripLossAction.STOP_LATCH: "controlled stop, latched",
    GripLossAction.SLOW: "slow down",
    GripLossAction.WARN: "warning only",
    GripLossAction.NONE: "not watched",
}


@dataclass(frozen=True)
class StageLimits:
    """What the current stage allows, as shown under the speed bars."""

    number: int
    name: str
    max_kmh: float
    accel_kmh_s: float
    grip_hands_required: int
    on_grip_loss: str  # words, e.g. "controlled stop, latched"
    grip_grace_ms: int
    clip_required: bool


def stage_limits(stage: StageConfig) -> StageLimits:
    """The :class:`StageLimits` shown for ``stage``."""
    return StageLimits(
        number=stage.number,
        name=stage.name,
        max_kmh=stage.max_kmh,
        accel_kmh_s=stage.accel_kmh_s,
        grip_hands_required=stage.grip_hands_required,
        on_grip_loss=_GRIP_POLICY_TEXT.get(stage.on_grip_loss, str(stage.on_grip_loss)),
        grip_grace_ms=stage.grip_grace_ms,
        clip_required=stage.clip_required,
    )


@dataclass(frozen=True)
class ViewEvent:
    """One line of the event list: ``when`` is already formatted (``12.3 s``, ``14:02:11``)."""

    when: str
    kind: str
    message: str


@dataclass(frozen=True)
class TreadmillView:
    """Everything one screen or line shows. ``None`` means *not known* and is shown as ``?``."""

    title: str = "treadmill"
    online: bool | None = None  # MQTT availability (monitor); None when not applicable
    state: str | None = None
    stage: int | None = None
    stage_name: str | None = None
    stage_max_kmh: float | None = None
    limits: StageLimits | None = None
    belt_true_kmh: float | None = None  # independent belt reading (simulator's true speed)
    measured_kmh: float | None = None
    commanded_kmh: float | None = None
    target_kmh: float | None = None
    gauge_max_kmh: float = 8.0
    grip: str | None = None
    safety_key: bool | None = None
    estop: bool | None = None
    fault_code: str | None = None
    fault_message: str | None = None
    stop_reason: str | None = None
    link_ok: bool | None = None
    session_s: float | None = None
    distance_m: float | None = None
    remaining_s: float | None = None  # of the stage's session limit
    client_id: str | None = None
    stage_cap: int | None = None  # the lower of the training and the remote stage cap
    warnings: tuple[str, ...] = ()
    key_relay: str | None = None  # key-relay mode: "closed" / "open"; None: firmware mode
    belt_sensor_kmh: float | None = None  # the Pi's own belt sensor, when fitted
    events: tuple[ViewEvent, ...] = ()
    notes: tuple[str, ...] = field(default=())  # help lines under the view


def _float(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _int(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


def _bool(value: object) -> bool | None:
    return value if isinstance(value, bool) else None


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def view_from_state(
    payload: Mapping[str, object],
    *,
    title: str = "treadmill",
    online: bool | None = None,
    events: Sequence[ViewEvent] = (),
    limits: StageLimits | None = None,
    gauge_max_kmh: float | None = None,
    session_s: float | None = None,
    distance_m: float | None = None,
    notes: Sequence[str] = (),
) -> TreadmillView:
    """Build a view from a ``state`` payload (docs/mqtt.md). Unknown or malformed fields show
    as ``?``: the view never fails on what a broker hands it.

    ``session_s``/``distance_m`` are used when the payload carries no training session.
    """
    fault = payload.get("fault")
    fault_code = fault_message = None
    if isinstance(fault, Mapping):
        fault_code = _str(fault.get("code"))
        fault_message = _str(fault.get("message"))
    session = payload.get("session")
    remaining_s = None
    client_id = None
    if isinstance(session, Mapping):
        session_s = _float(session.get("elapsed_s"))
        distance_m = _float(session.get("distance_m"))
        remaining_s = _float(session.get("remaining_s"))
        client_id = _str(session.get("client_id"))
    caps = (_int(payload.get("stage_cap")), _int(payload.get("remote_stage_cap")))
    known_caps = [cap for cap in caps if cap is not None]
    firmware = payload.get("firmware")
    link_ok = _bool(firmware.get("link")) if isinstance(firmware, Mapping) else None
    raw_warnings = payload.get("warnings")
    warnings = tuple(str(w) for w in raw_warnings) if isinstance(raw_warnings, list | tuple) else ()
    stage_max = _float(payload.get("stage_max_kmh"))
    if gauge_max_kmh is None:
        gauge_max_kmh = max(8.0, stage_max or 0.0)
    return TreadmillView(
        title=title,
        online=online,
        state=_str(payload.get("state")),
        stage=_int(payload.get("stage")),
        stage_name=_str(payload.get("stage_name")),
        stage_max_kmh=stage_max,
        limits=limits,
        belt_true_kmh=_float(payload.get("belt_kmh")),
        measured_kmh=_float(payload.get("speed_kmh")),
        commanded_kmh=_float(payload.get("commanded_kmh")),
        target_kmh=_float(payload.get("target_kmh")),
        gauge_max_kmh=gauge_max_kmh,
        grip=_str(payload.get("grip")),
        safety_key=_bool(payload.get("safety_key")),
        estop=_bool(payload.get("estop")),
        fault_code=fault_code,
        fault_message=fault_message,
        stop_reason=_str(payload.get("stop_reason")),
        link_ok=link_ok,
        session_s=session_s,
        distance_m=distance_m,
        remaining_s=remaining_s,
        client_id=client_id,
        stage_cap=min(known_caps) if known_caps else None,
        warnings=warnings,
        key_relay=_str(payload.get("key_relay")),
        belt_sensor_kmh=_float(payload.get("belt_sensor_kmh")),
        events=tuple(events),
        notes=tuple(notes),
    )


# --------------------------------------------------------------------------- formatting


def _kmh(value: float | None) -> str:
    return "?" if value is None else f"{value:.2f}"


def _yes_no(value: bool | None, yes: str, no: str) -> str:
    if value is None:
        return "?"
    return yes if value else no


def gauge(
    value_kmh: float | None,
    max_kmh: float,
    width: int = GAUGE_WIDTH,
    *,
    ascii_only: bool = False,
    marker_kmh: float | None = None,
) -> str:
    """A horizontal bar ``[#####-----]`` for ``value_kmh`` on a 0..``max_kmh`` scale.

    ``marker_kmh`` draws a ``|`` at that speed (the stage maximum). Values beyond the scale
    fill the bar and end in ``>``.

    >>> gauge(2.0, 8.0, 8, ascii_only=True)
    '[##------]'
    >>> gauge(9.0, 8.0, 4, ascii_only=True)
    '[###>]'
    """
    full, empty = ("#", "-") if ascii_only else ("\u2588", "\u00b7")
    if width <= 0 or max_kmh <= 0:
        return "[]"
    cells = [empty] * width
    if marker_kmh is not None and 0 < marker_kmh <= max_kmh:
        cells[min(width - 1, round(marker_kmh / max_kmh * width) - 1)] = "|"
    if value_kmh is not None and value_kmh > 0:
        filled = min(width, round(value_kmh / max_kmh * width))
        for index in range(filled):
            cells[index] = full
        if value_kmh > max_kmh:
            cells[-1] = ">"
    return "[" + "".join(cells) + "]"


def _state_text(view: TreadmillView) -> str:
    return (view.state or "?").upper()


def _fault_text(view: TreadmillView) -> str:
    return view.fault_code or "-"


def _minutes(seconds: float) -> str:
    whole = max(0, round(seconds))
    return f"{whole // 60}:{whole % 60:02d}"


def render_line(view: TreadmillView) -> str:
    """One plain line (no colour, no control characters): logs, pipes, the monitor's list.

    What matters first: availability, state and fault, then the safety inputs, then the
    stage and speeds, then the session (time left, client). Groups are separated by ``|``
    so that a wrapped line still reads well (:func:`wrap_line`).
    """
    head: list[str] = []
    if view.online is not None:
        head.append("online " if view.online else "OFFLINE")
    head.append(_state_text(view))
    head.append(f"fault {_fault_text(view)}")
    if view.key_relay is not None:
        head.append(f"relay {'closed' if view.key_relay == 'closed' else 'OPEN'}")
    elif view.link_ok is False:
        head.append("firmware link DOWN")
    groups = [" ".join(head)]
    groups.append(
        f"e-stop {_yes_no(view.estop, 'PRESSED', 'released')} "
        f"key {_yes_no(view.safety_key, 'in', 'OUT')} grip {view.grip or '?'}"
    )
    stage = f"stage {view.stage if view.stage is not None else '?'}"
    if view.stage_cap is not None:
        stage += f" (cap {view.stage_cap})"
    if view.key_relay is not None:  # the console sets the speed: only the Pi's sensor reads it
        belt = view.belt_true_kmh if view.belt_true_kmh is not None else view.belt_sensor_kmh
        groups.append(
            f"{stage} belt {_kmh(belt)} km/h (Pi sensor {_kmh(view.belt_sensor_kmh)}, "
            "speed set at the console)"
        )
    else:
        belt = view.belt_true_kmh if view.belt_true_kmh is not None else view.measured_kmh
        groups.append(
            f"{stage} belt {_kmh(belt)} km/h (measured {_kmh(view.measured_kmh)}, "
            f"commanded {_kmh(view.commanded_kmh)}, target {_kmh(view.target_kmh)})"
        )
    session: list[str] = []
    if view.remaining_s is not None:
        session.append(f"session {_minutes(view.remaining_s)} left")
    elif view.session_s is not None:
        session.append(f"session {_minutes(view.session_s)}")
    if view.client_id is not None:
        session.append(f"client {view.client_id}")
    if session:
        groups.append(", ".join(session))
    return " | ".join(groups)


def wrap_line(text: str, width: int, indent: str) -> list[str]:
    """``text`` wrapped at spaces to ``width`` columns, continuation lines indented with
    ``indent``: nothing is cut off (the monitor's fleet list)."""
    words = text.split()
    lines: list[str] = []
    current = ""
    for word in words:
        prefix = indent if lines else ""
        candidate = f"{current} {word}" if current else word
        if len(prefix) + len(candidate) > width and current:
            lines.append(prefix + current)
            current = word
        else:
            current = candidate
    if current or not lines:
        lines.append((indent if lines else "") + current)
    return lines


def _paint(text: str, colour: str, use_colour: bool) -> str:
    return f"{colour}{text}{_RESET}" if use_colour else text


def _wrap(text: str, width: int, indent: str) -> list[str]:
    """Split ``text`` at spaces into lines of at most ``width`` characters."""
    lines: list[str] = []
    current = ""
    for word in text.split():
        candidate = f"{current} {word}" if current else word
        if len(indent) + len(candidate) > width and current:
            lines.append(indent + current)
            current = word
        else:
            current = candidate
    if current:
        lines.append(indent + current)
    return lines or [indent]


def render_screen(
    view: TreadmillView, *, width: int = 80, use_colour: bool = True, ascii_only: bool = False
) -> list[str]:
    """The full view as lines (no trailing newlines). The caller redraws them in place."""
    width = max(40, width)
    bar = max(10, min(GAUGE_WIDTH, width - 36))
    lines: list[str] = []
    state_colour = {
        "RUNNING": _GREEN,
        "STOPPING": _YELLOW,
        "FAULTED": _RED,
    }.get(_state_text(view), _BOLD)
    header = f"{view.title}  "
    if view.online is not None:
        header += ("online" if view.online else _paint("OFFLINE", _RED, use_colour)) + "  "
    header += _paint(_state_text(view), state_colour, use_colour)
    if view.key_relay == "closed":
        header += "  " + _paint("relay closed", _GREEN, use_colour)
    elif view.key_relay is not None:
        header += "  " + _paint("relay OPEN", _YELLOW, use_colour)
    elif view.link_ok is False:
        header += "  " + _paint("firmware link DOWN", _RED, use_colour)
    lines.append(header)
    lines.append("")
    scale = view.gauge_max_kmh
    marker = view.limits.max_kmh if view.limits is not None else view.stage_max_kmh
    rows: tuple[tuple[str, float | None], ...] = (
        ("belt (true)", view.belt_true_kmh),
        ("measured", view.measured_kmh),
        ("commanded", view.commanded_kmh),
        ("target", view.target_kmh),
    )
    if view.key_relay is not None:  # key-relay mode: the Pi reads the belt, sets nothing
        rows = (("belt (true)", view.belt_true_kmh), ("Pi sensor", view.belt_sensor_kmh))
    elif view.belt_sensor_kmh is not None:
        rows = (*rows[:2], ("Pi sensor", view.belt_sensor_kmh), *rows[2:])
    for label, value in rows:
        if label == "belt (true)" and value is None:
            continue
        lines.append(
            f"  {label:<12}{_kmh(value):>6} km/h "
            f"{gauge(value, scale, bar, ascii_only=ascii_only, marker_kmh=marker)}"
        )
    lines.append(f"  {'':<12}{'':>6}       0{'':<{bar - 6}}{scale:>5.1f}")
    lines.append("")
    if view.limits is not None:
        limits = view.limits
        hands = (
            "no grip needed"
            if limits.grip_hands_required == 0
            else f"{limits.grip_hands_required} hand(s) on the rails"
        )
        lines.append(
            f"  stage {limits.number} {limits.name}: max {limits.max_kmh:.1f} km/h, "
            f"accel {limits.accel_kmh_s:.2f} km/h/s"
        )
        lines.append(
            f"    grip: {hands}; on loss: {limits.on_grip_loss}, grace {limits.grip_grace_ms} ms"
            + ("; clip required" if limits.clip_required else "")
        )
    else:
        name = f" {view.stage_name}" if view.stage_name else ""
        stage_max = f": max {view.stage_max_kmh:.1f} km/h" if view.stage_max_kmh else ""
        lines.append(f"  stage {view.stage if view.stage is not None else '?'}{name}{stage_max}")
    grip = view.grip or "?"
    key = _yes_no(view.safety_key, "in", "OUT")
    estop = _yes_no(view.estop, "PRESSED", "released")
    key_text = _paint(key, _RED, use_colour) if view.safety_key is False else key
    estop_text = _paint(estop, _RED, use_colour) if view.estop else estop
    lines.append(f"  grip {grip:<6} safety key {key_text:<3}  e-stop {estop_text}")
    session = "?" if view.session_s is None else f"{view.session_s:6.1f} s"
    distance = "?" if view.distance_m is None else f"{view.distance_m:7.1f} m"
    lines.append(f"  session {session}   distance {distance}")
    if view.fault_code is not None:
        lines.append("  " + _paint(f"FAULT {view.fault_code}", _RED, use_colour))
        lines.extend(_wrap(view.fault_message or "", width, "    "))
    else:
        lines.append(
            "  fault -" + (f"   last stop: {view.stop_reason}" if view.stop_reason else "")
        )
    if view.warnings:
        lines.append("  " + _paint("warnings: " + ", ".join(view.warnings), _YELLOW, use_colour))
    lines.append("")
    lines.append("  events:")
    if not view.events:
        lines.append("    (none yet)")
    for event in view.events:
        text = f"    {event.when:>8} {event.kind}: {event.message}"
        lines.append(text if len(text) <= width else text[: width - 3] + "...")
    if view.notes:
        lines.append("")
        lines.extend(view.notes)
    return lines


def screen_text(lines: Sequence[str]) -> str:
    """ANSI text that redraws ``lines`` in place from the top-left corner."""
    return CURSOR_HOME + "".join(line + CLEAR_TO_EOL + "\n" for line in lines) + CLEAR_BELOW
