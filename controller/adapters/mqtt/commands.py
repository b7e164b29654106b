"""Parsing of remote commands received over MQTT.

Pure: no I/O, no clock, no logging. :func:`parse_command` turns the last part of a
``<prefix>/cmd/<name>`` topic and its raw payload into a command for the safety core,
or into :class:`CommandRejected` with a reason that names what was seen and what is
accepted. It never raises, whatever the bytes.

Remote commands can only make things safer (docs/safety.md, docs/mqtt.md):

================  ==========================================  ==============================
topic suffix      payload                                     result
================  ==========================================  ==============================
``stop``          anything up to the size limit (``PRESS``,   :class:`RemoteStop`
                  ``STOP``, ``{}``, empty, ...)
``target_kmh``    JSON number, or ``{"speed_kmh": number}``,  :class:`RemoteLowerTarget`
                  finite, ``0 <= x <= max_speed_kmh``
``stage_cap``     JSON integer, or ``{"stage": integer}``,    :class:`RemoteLowerStageCap`
                  ``1 <= n <= max_stage``
``client``        ``{"client_id": "<id>"}`` or                :class:`AssignClient`
                  ``{"client_id": null}``; id matches
                  ``[A-Za-z0-9_-]{1,32}``
================  ==========================================  ==============================

Whether a target or stage cap really *lowers* the current one, and whether a client
may be assigned now (only at rest), is decided by the core and the service, not here.

>>> parse_command("target_kmh", b'{"speed_kmh": 1.5}', max_payload_bytes=1024,
...               max_stage=4, max_speed_kmh=8.0)
RemoteLowerTarget(speed_kmh=1.5)
>>> parse_command("start", b"", max_payload_bytes=1024, max_stage=4,
...               max_speed_kmh=8.0).reason  # doctest: +ELLIPSIS
'the belt can only be started, sped up or reset at the console...'
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Final

from controller.errors import TreadmillError
from controller.rules.model import RemoteLowerStageCap, RemoteLowerTarget, RemoteStop

__all__ = [
    "COMMAND_NAMES",
    "AssignClient",
    "CommandRejected",
    "ParsedCommand",
    "excerpt",
    "parse_command",
]

COMMAND_NAMES: Final[tuple[str, ...]] = ("stop", "target_kmh", "stage_cap", "client")
"""Every command name accepted under ``<prefix>/cmd/``."""

CLIENT_ID_PATTERN: Final[str] = "[A-Za-z0-9_-]{1,32}"
_CLIENT_ID_RE: Final[re.Pattern[str]] = re.compile(CLIENT_ID_PATTERN)

EXCERPT_CHARS: Final[int] = 48
"""How much of a rejected payload is quoted back (escaped) in the rejection."""

_LOCAL_ONLY: Final[frozenset[str]] = frozenset(
    {"start", "reset", "faster", "stage", "stage_up", "speed", "speed_kmh", "clear_fault"}
)


@dataclass(frozen=True)
class CommandRejected:
    """A remote command that was not accepted, with the reason.

    ``command`` is the topic suffix as received (escaped, shortened), ``reason`` says
    what was seen and what is accepted, ``payload_excerpt`` quotes the start of the
    payload with anything unprintable escaped.
    """

    command: str
    reason: str
    payload_excerpt: str


@dataclass(frozen=True)
class AssignClient:
    """``cmd/client``: assign (or clear, with ``None``) the opaque client id of the session.

    The training program files the session under this id. The service accepts it only
    while the belt is at rest.
    """

    client_id: str | None


ParsedCommand = (
    RemoteStop | RemoteLowerTarget | RemoteLowerStageCap | AssignClient | CommandRejected
)


class _BadPayloadError(TreadmillError):
    """Internal: a payload failed validation; the message is the reason."""


def excerpt(raw: bytes | str, limit: int = EXCERPT_CHARS) -> str:
    """Return the start of ``raw`` as printable text, unprintable characters escaped.

    Bytes that are not UTF-8 appear as ``\\xNN``; a cut is marked with ``...``.

    >>> excerpt(b'ab\\n\\xff')
    'ab\\\\n\\\\xff'
    """
    text = raw.decode("utf-8", "backslashreplace") if isinstance(raw, bytes) else raw
    cut = len(text) > limit
    text = text[:limit]
    out = "".join(c if c.isprintable() else _escape(c) for c in text)
    return out + "..." if cut else out


def _escape(char: str) -> str:
    return char.encode("unicode_escape").decode("ascii")


def _describe(value: object) -> str:
    """Name the JSON type of ``value`` for an error message."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int):
        return f"the integer {excerpt(str(value), 24)}"
    if isinstance(value, float):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f'the string "{excerpt(value, 24)}"'
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        keys = ", ".join(excerpt(str(k), 16) for k in list(value)[:4])
        return f"an object with keys [{keys}]" if value else "an empty object"
    return type(value).__name__  # pragma: no cover - json.loads gives only the above


def _reject_constant(name: str) -> object:
    raise _BadPayloadError(f"got {name}, not a finite number")


def _load_json(text: str) -> object:
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except _BadPayloadError:
        raise
    except RecursionError:
        raise _BadPayloadError("JSON nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, and int strings too long to convert
        raise _BadPayloadError(f"not valid JSON ({excerpt(str(exc), 80)})") from None


def _decode(payload: bytes) -> str:
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _BadPayloadError(
            f"payload is not UTF-8 text (byte 0x{payload[exc.start]:02x} at offset {exc.start})"
        ) from None


def _unwrap(value: object, key: str) -> object:
    """Accept ``value`` itself, or ``{key: value}`` with no other keys."""
    if isinstance(value, dict):
        if set(value) != {key}:
            raise _BadPayloadError(f"got {_describe(value)}")
        return value[key]
    return value


def _accepted_target(max_speed_kmh: float) -> str:
    return f'a JSON number or {{"speed_kmh": number}} with 0 <= speed_kmh <= {max_speed_kmh:g}'


def _accepted_stage_cap(max_stage: int) -> str:
    return f'a JSON integer or {{"stage": integer}} with 1 <= stage <= {max_stage}'


_ACCEPTED_CLIENT: Final[str] = (
    f'{{"client_id": "<id matching {CLIENT_ID_PATTERN}>"}} or {{"client_id": null}}'
)


def _parse_target(payload: bytes, max_speed_kmh: float) -> RemoteLowerTarget:
    value = _unwrap(_load_json(_decode(payload)), "speed_kmh")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _BadPayloadError(f"got {_describe(value)}")
    if isinstance(value, int) and not -1e300 < value < 1e300:
        raise _BadPayloadError(f"got {_describe(value)}, out of range")
    speed_kmh = float(value)
    if not math.isfinite(speed_kmh):
        raise _BadPayloadError(f"got {_describe(value)}, not finite")
    if not 0.0 <= speed_kmh <= max_speed_kmh:
        raise _BadPayloadError(f"got {speed_kmh:g} km/h, out of range")
    return RemoteLowerTarget(speed_kmh=speed_kmh)


def _parse_stage_cap(payload: bytes, max_stage: int) -> RemoteLowerStageCap:
    value = _unwrap(_load_json(_decode(payload)), "stage")
    if isinstance(value, bool) or not isinstance(value, int):
        raise _BadPayloadError(f"got {_describe(value)}")
    if not 1 <= value <= max_stage:
        raise _BadPayloadError(f"got stage {excerpt(str(value), 24)}, out of range")
    return RemoteLowerStageCap(stage=value)


def _parse_client(payload: bytes) -> AssignClient:
    value = _load_json(_decode(payload))
    if not isinstance(value, dict) or set(value) != {"client_id"}:
        raise _BadPayloadError(f"got {_describe(value)}")
    client_id = value["client_id"]
    if client_id is None:
        return AssignClient(client_id=None)
    if not isinstance(client_id, str) or _CLIENT_ID_RE.fullmatch(client_id) is None:
        raise _BadPayloadError(f"got client_id {_describe(client_id)}")
    return AssignClient(client_id=client_id)


def parse_command(
    name: str,
    payload: bytes,
    *,
    max_payload_bytes: int,
    max_stage: int,
    max_speed_kmh: float,
) -> ParsedCommand:
    """Parse the command ``name`` (the topic after ``<prefix>/cmd/``) and its ``payload``.

    Never raises: anything not accepted becomes :class:`CommandRejected`.
    ``max_speed_kmh`` is the machine ceiling and ``max_stage`` the number of stages;
    whether a value lowers the current one is decided later by the core.
    """
    shown_name = excerpt(name, 40)
    shown_payload = excerpt(payload)
    if len(payload) > max_payload_bytes:
        return CommandRejected(
            command=shown_name,
            reason=(
                f"payload of {len(payload)} bytes is over the limit of {max_payload_bytes} bytes"
            ),
            payload_excerpt=shown_payload,
        )
    if name not in COMMAND_NAMES:
        accepted = ", ".join(f"cmd/{n}" for n in COMMAND_NAMES)
        if name in _LOCAL_ONLY:
            reason = (
                f"the belt can only be started, sped up or reset at the console; "
                f"cmd/{shown_name} is not a remote command (accepted: {accepted})"
            )
        else:
            reason = f"unknown command cmd/{shown_name} (accepted: {accepted})"
        return CommandRejected(command=shown_name, reason=reason, payload_excerpt=shown_payload)
    if name == "stop":
        return RemoteStop()
    try:
        if name == "target_kmh":
            return _parse_target(payload, max_speed_kmh)
        if name == "stage_cap":
            return _parse_stage_cap(payload, max_stage)
        return _parse_client(payload)
    except _BadPayloadError as exc:
        if name == "target_kmh":
            accepted = _accepted_target(max_speed_kmh)
        elif name == "stage_cap":
            accepted = _accepted_stage_cap(max_stage)
        else:
            accepted = _ACCEPTED_CLIENT
        return CommandRejected(
            command=name, reason=f"{exc}; accepted: {accepted}", payload_excerpt=shown_payload
        )
