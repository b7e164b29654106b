"""What the link session (``firmware_bridge.wire.session``) hands back: the actions the bridge
carries out, the latest STATUS as the controller sees it, the reconnect back-off and the texts
of its reports.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from firmware_bridge.wire.link_phases import LinkPhase
from firmware_bridge.wire.messages import PROTOCOL_VERSION, Hello, NakReason, Status

#: Log levels of :class:`Note`, the numbers of the :mod:`logging` module.
DEBUG: Final = 10
INFO: Final = 20
WARNING: Final = 30
ERROR: Final = 40

#: The jitter factor of the reconnect back-off is drawn from this range by the caller.
JITTER_RANGE: Final = (0.75, 1.25)


@dataclass(frozen=True)
class FirmwareLimits:
    """Run-time limits sent in CONFIGURE (each at or below the firmware's compiled ceiling)."""

    max_speed_kmh: float
    max_accel_kmh_s: float
    max_decel_kmh_s: float
    max_lease_ms: int


@dataclass(frozen=True)
class StatusSnapshot:
    """The latest STATUS, when it was received and what it is checked against.

    ``received_ms`` is from the bridge's clock; the controller judges freshness from it.
    ``config_checksum_expected`` is the checksum of the CONFIGURE this bridge sends; the
    firmware's ``status.config_checksum`` must equal it. ``boot_id`` is from the firmware's
    HELLO of the current boot. ``seq`` is the STATUS frame's sequence number.
    """

    status: Status
    received_ms: int
    boot_id: int
    config_checksum_expected: int
    seq: int


@dataclass(frozen=True, slots=True)
class Send:
    """Write ``frame`` to the port; ``reliable``: it waits for an ACK (retransmitted)."""

    frame: bytes
    reliable: bool = False


@dataclass(frozen=True)
class LinkReport:
    """The link went up (``up``: handshake complete, motion allowed) or down."""

    up: bool
    reason: str


@dataclass(frozen=True)
class NewBoot:
    """The firmware's HELLO announces a boot other than the one the host knew."""

    hello: Hello


@dataclass(frozen=True)
class Note:
    """A line for the log at ``level`` (:data:`DEBUG` .. :data:`ERROR`)."""

    level: int
    text: str


@dataclass(frozen=True)
class EndSession:
    """This port session is over (``reason`` says why): close the port and reconnect."""

    reason: str


Action = Send | LinkReport | NewBoot | Note | EndSession


def backoff_s(failures: int, min_s: float, max_s: float, jitter: float) -> float:
    """Reconnect delay after ``failures`` failed sessions in a row: ``min_s * 2^(n-1)``,
    capped at ``max_s``, times ``jitter`` (drawn from :data:`JITTER_RANGE`), kept within
    ``min_s / 2 .. max_s``."""
    base = min_s * (2.0 ** max(0, failures - 1))
    jittered = min(base, max_s) * jitter
    return max(min_s * 0.5, min(jittered, max_s))


class ReconnectPolicy:
    """When to open the port again after a port session ended or the port could not be
    opened: jittered exponential back-off (:func:`backoff_s`), started afresh after a session
    that completed a handshake; a reason repeating unchanged is logged at DEBUG only."""

    def __init__(self, min_s: float, max_s: float) -> None:
        if not 0 < min_s <= max_s:
            raise ValueError(
                f"reconnect backoff {min_s!r}..{max_s!r} s "
                "must satisfy 0 < reconnect_min_s <= reconnect_max_s"
            )
        self.min_s = min_s
        self.max_s = max_s
        self.failures = 0
        self._last_logged: str | None = None

    def after(self, reason: str, *, handshook: bool, jitter: float) -> tuple[float, Note]:
        """The delay (s) before the next open and the log line, after a failure for
        ``reason``; ``handshook``: the session that ended had completed a handshake."""
        if handshook:
            self.failures = 0  # it worked for a while: start the backoff afresh
            self._last_logged = reason  # the link-down report said it already
        if reason != self._last_logged:
            note = Note(WARNING, reason)
            self._last_logged = reason
        else:
            note = Note(DEBUG, reason)
        self.failures += 1
        return backoff_s(self.failures, self.min_s, self.max_s, jitter), note


def configure_advice(reason: NakReason, hello: Hello | None) -> str:
    """What to do about a CONFIGURE the firmware refused for ``reason``."""
    if reason is NakReason.ABOVE_CEILING and hello is not None:
        return (
            f"the firmware's compiled-in ceilings are {hello.max_speed_kmh} km/h and "
            f"{hello.max_accel_kmh_s} km/h/s: lower the configured limits"
        )
    if reason is NakReason.BELT_MOVING:
        return "the belt is moving: the firmware accepts CONFIGURE only at rest"
    return "check the configured firmware limits against docs/protocol.md"


def configure_refused_text(
    text: str, limits: FirmwareLimits, reason: NakReason, hello: Hello | None
) -> str:
    """A CONFIGURE refused for good (§8 step 6): the limits sent and what to do."""
    return (
        f"{text}: CONFIGURE max_speed {limits.max_speed_kmh} km/h, max_accel "
        f"{limits.max_accel_kmh_s} km/h/s, max_decel {limits.max_decel_kmh_s} km/h/s, "
        f"max_lease {limits.max_lease_ms} ms; " + configure_advice(reason, hello)
    )


def not_idle_text(status: Status, expected_checksum: int) -> str:
    """The firmware is not IDLE and holds other limits: CONFIGURE waits (§8 step 7)."""
    return (
        f"firmware is {status.state.name} (fault {status.fault.name}) with "
        f"config checksum {status.config_checksum:#06x}, expected "
        f"{expected_checksum:#06x}: CONFIGURE is sent once it "
        "is IDLE (a latched fault needs a reset at rest)"
    )


def reboot_text(hello: Hello) -> str:
    """A HELLO of a new boot on an open link (§8 step 4)."""
    return (
        f"firmware rebooted: boot_id {hello.boot_id:#010x}, reset cause "
        f"{hello.reset_cause.name}, uptime {hello.uptime_ms} ms"
    )


def hello_text(hello: Hello) -> str:
    """The firmware's HELLO of a boot the host had not seen."""
    return (
        f"firmware {hello.fw_version}, protocol v{hello.protocol_version}, boot_id "
        f"{hello.boot_id:#010x}, reset cause {hello.reset_cause.name}, ceilings "
        f"{hello.max_speed_kmh:.2f} km/h and {hello.max_accel_kmh_s:.2f} km/h/s"
    )


def mismatch_text(hello: Hello, port: str) -> str:
    """A firmware of another protocol version (§8 step 3)."""
    return (
        f"firmware speaks protocol v{hello.protocol_version}, controller needs "
        f"v{PROTOCOL_VERSION}: update the firmware (firmware {hello.fw_version} on "
        f"{port}); only STOP and ESTOP will be sent to it"
    )


def handshake_timeout_text(
    timeout_ms: int, phase: LinkPhase, last_checksum: int | None, expected: int, baud: int
) -> str:
    """The handshake did not end within ``timeout_ms``, stuck in ``phase``."""
    head = f"handshake did not complete within {timeout_ms} ms"
    if phase is LinkPhase.CHECKSUM and last_checksum is not None:
        return (
            f"{head}: the firmware accepted CONFIGURE but its STATUS echoes config "
            f"checksum {last_checksum:#06x}, expected "
            f"{expected:#06x}: the firmware did not apply the limits"
        )
    if phase is LinkPhase.HELLO:
        return (
            f"{head}: no HELLO answer from the firmware: check that it is running and that "
            f"the baud rate ({baud}) matches"
        )
    return f"{head} (stuck waiting for {phase.value})"
