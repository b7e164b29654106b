"""Async serial bridge to the motor-controller firmware: the only module that opens the port.

:class:`FirmwareBridge` owns the serial port for the life of the service. Its :meth:`run`
task opens the port (by path, including ``/dev/serial/by-id/...`` links, with an exclusive
lock), does the handshake, reads STATUS frames, retransmits unanswered reliable frames, and
when the port disappears or falls silent closes it and opens it again with jittered
exponential backoff, forever, until cancelled.

Safety rules kept here (docs/protocol.md, docs/safety.md):

- **No motion while the link is down.** :meth:`set_speed` writes at once or returns False;
  nothing is ever queued for later. While the link is down the firmware's motion lease runs
  out and the firmware stops the belt on its own.
- **No restart after a reconnect.** After a reconnect the bridge only handshakes (HELLO,
  CONFIGURE, checksum echo). It never sends SET_SPEED by itself; motion resumes only if the
  controller asks for it, and the controller latches a fault on a link loss.
- **STOP and ESTOP go out whenever the port is open**, handshake or not, and are
  retransmitted until ACKed. A firmware speaking another protocol version gets nothing else.
- **Freshness is the controller's call**: every STATUS is stamped with ``received_ms`` from
  the injected clock, and the latest one is kept, even across a link loss.

Example::

    bridge = FirmwareBridge(
        "/dev/serial/by-id/usb-treadmill-if00",
        baud=115200,
        limits=FirmwareLimits(max_speed_kmh=8.0, max_accel_kmh_s=0.5,
                              max_decel_kmh_s=3.6, max_lease_ms=300),
        clock_ms=lambda: time.monotonic_ns() // 1_000_000,
    )
    async with asyncio.TaskGroup() as tg:
        tg.create_task(bridge.run(), name="firmware-bridge")
        await bridge.ready.wait()
        bridge.set_speed(1.0, 0.2, 300)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import serial
import serial_asyncio_fast

from controller.errors import TreadmillError
from firmware_bridge.wire.codec import Frame, FrameDecoder, encode_frame
from firmware_bridge.wire.link import ReliableSender, RxSequenceChecker, SeqKind, SequenceCounter
from firmware_bridge.wire.link_phases import LinkPhase as _Phase
from firmware_bridge.wire.link_phases import is_allowed
from firmware_bridge.wire.messages import (
    PROTOCOL_VERSION,
    Ack,
    ClearFault,
    Configure,
    EStop,
    FaultReport,
    FwState,
    GetStatus,
    Hello,
    Message,
    Nak,
    NakReason,
    SetSpeed,
    Status,
    Stop,
    host_hello,
)

__all__ = [
    "FirmwareBridge",
    "FirmwareLimits",
    "LinkStats",
    "StatusSnapshot",
]

_LOG = logging.getLogger(__name__)

#: Longest sleep of the supervisor (ms). It checks retransmits, link silence and the
#: handshake when the earliest of their deadlines comes, and at once when a frame that needs
#: an ACK is sent; this bound only limits how long it trusts its own arithmetic.
SUPERVISE_MAX_SLEEP_MS = 100
#: Bytes asked for per read; a STATUS frame is 24 bytes.
_READ_CHUNK = 1024
#: CONFIGUREs refused (firmware not IDLE) in one session before giving up on the session.
_MAX_CONFIGURE_ATTEMPTS = 3
#: STATUS uptime going back by more than this (ms) means the firmware restarted.
_UPTIME_BACKSTEP_MS = 1000
#: ... unless it was about to wrap at 2^32 ms (49.7 days).
_UPTIME_WRAP_GUARD_MS = (1 << 32) - 60_000


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


@dataclass(frozen=True)
class LinkStats:
    """Counters since the bridge was created (they survive reconnects)."""

    connected: bool
    handshakes: int  # completed handshakes
    reconnects: int  # port opens after the first
    frames_rx: int  # valid frames received
    frames_tx: int  # frames written, retransmissions included
    crc_errors: int
    resyncs: int
    bytes_skipped: int
    retransmits: int
    naks: int  # NAK frames received
    rx_seq_gaps: int  # gaps in the firmware's sequence numbers (lost frames), as events
    rx_duplicates: int
    motion_dropped_link_down: int  # SET_SPEED/STOP/ESTOP refused because the link was down
    last_error: str | None


#: Handshake steps that must end within ``handshake_timeout_ms``.
_TIMED_PHASES = frozenset({_Phase.HELLO, _Phase.FIRST_STATUS, _Phase.CONFIGURE, _Phase.CHECKSUM})


class _LinkDownError(TreadmillError):
    """Internal: the current session ended; ``reason`` says why (logged once)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class FirmwareBridge:
    """Owns the serial link to the firmware. See the module docstring for the rules it keeps.

    ``clock_ms`` is the service's monotonic millisecond clock; every time stamp and timeout
    of the bridge uses it. ``on_link_change(connected, reason)`` is called once per link up
    and link down; ``on_hello(hello)`` for every firmware HELLO that announces a new boot
    while the bridge already knew an earlier one (an unexpected firmware reset).
    """

    def __init__(
        self,
        port: str,
        *,
        baud: int,
        limits: FirmwareLimits,
        clock_ms: Callable[[], int],
        reconnect_min_s: float = 0.2,
        reconnect_max_s: float = 5.0,
        handshake_timeout_ms: int = 1000,
        link_timeout_ms: int = 500,
        on_link_change: Callable[[bool, str], None] | None = None,
        on_hello: Callable[[Hello], None] | None = None,
        rng: random.Random | None = None,
        open_port: Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]
        | None = None,
    ) -> None:
        if not port:
            raise ValueError("FirmwareBridge port is empty: give the serial device path")
        if baud <= 0:
            raise ValueError(f"FirmwareBridge baud = {baud!r} must be > 0")
        if not 0 < reconnect_min_s <= reconnect_max_s:
            raise ValueError(
                f"FirmwareBridge reconnect backoff {reconnect_min_s!r}..{reconnect_max_s!r} s "
                "must satisfy 0 < reconnect_min_s <= reconnect_max_s"
            )
        if handshake_timeout_ms <= 0 or link_timeout_ms <= 0:
            raise ValueError(
                f"FirmwareBridge timeouts must be > 0 ms: handshake {handshake_timeout_ms!r}, "
                f"link {link_timeout_ms!r}"
            )
        self._port = port
        self._baud = baud
        self._limits = limits
        # Range-checks the limits now (MessageError names the field) and fixes the checksum.
        self._configure = Configure.with_checksum(
            limits.max_speed_kmh,
            limits.max_accel_kmh_s,
            limits.max_decel_kmh_s,
            limits.max_lease_ms,
        )
        self._clock_ms = clock_ms
        self._reconnect_min_s = reconnect_min_s
        self._reconnect_max_s = reconnect_max_s
        self._handshake_timeout_ms = handshake_timeout_ms
        self._link_timeout_ms = link_timeout_ms
        self._rng = rng if rng is not None else random.Random()  # noqa: S311 - backoff jitter, not cryptography
        self.on_link_change = on_link_change
        self.on_hello = on_hello
        # Opens the link; None: the serial device ``port`` (an in-memory simulator passes its
        # own, see firmware_bridge.sim.memory).
        self._open_port = open_port
        self.ready = asyncio.Event()

        self._seq = SequenceCounter()
        self._decoder = FrameDecoder()
        self._rx_seq = RxSequenceChecker()
        self._sender = ReliableSender()
        self._pending_names: dict[int, str] = {}
        self._supervisor_waiter: asyncio.Future[None] | None = None

        self._writer: asyncio.StreamWriter | None = None
        self._transports: weakref.WeakSet[asyncio.BaseTransport] = weakref.WeakSet()
        self._phase = _Phase.CLOSED
        self._session_hello: Hello | None = None  # HELLO received in this session
        self._hello: Hello | None = None  # latest firmware HELLO ever received
        self._known_boot_id: int | None = None
        self._hello_seq: int | None = None
        self._hello_acked = False
        self._hello_answered = False
        self._configure_seq: int | None = None
        self._handshake_deadline_ms = 0
        self._last_rx_ms = 0
        self._latest: StatusSnapshot | None = None
        self._link_up = False
        self._mismatch_error: str | None = None
        self._last_status_checksum: int | None = None
        self._last_uptime_ms: int | None = None
        self._configure_attempts = 0

        self._handshakes = 0
        self._opens = 0
        self._frames_tx = 0
        self._naks = 0
        self._motion_dropped = 0
        self._last_error: str | None = None

    # ------------------------------------------------------------------ state

    @property
    def port(self) -> str:
        return self._port

    @property
    def connected(self) -> bool:
        """True while the port is open and the handshake of this session is complete."""
        return self._phase is _Phase.READY

    @property
    def hello(self) -> Hello | None:
        """The latest HELLO the firmware sent (kept across link losses)."""
        return self._hello

    @property
    def expected_config_checksum(self) -> int:
        """The checksum of our CONFIGURE; STATUS must echo it."""
        return self._configure.config_checksum

    @property
    def stats(self) -> LinkStats:
        dec = self._decoder.stats
        rx = self._rx_seq.stats
        return LinkStats(
            connected=self.connected,
            handshakes=self._handshakes,
            reconnects=max(0, self._opens - 1),
            frames_rx=dec.frames,
            frames_tx=self._frames_tx,
            crc_errors=dec.crc_errors,
            resyncs=dec.resyncs,
            bytes_skipped=dec.bytes_skipped,
            retransmits=self._sender.stats.retransmits,
            naks=self._naks,
            rx_seq_gaps=rx.gaps,
            rx_duplicates=rx.duplicates,
            motion_dropped_link_down=self._motion_dropped,
            last_error=self._last_error,
        )

    @property
    def session(self) -> int:
        """Completed handshakes since the bridge was created: a new value means the link was
        lost and set up again, however briefly (the controller latches a fault, SR-LINK-1)."""
        return self._handshakes

    @property
    def boot_id(self) -> int | None:
        """The boot id of the firmware's latest HELLO (None before the first): a reboot shows
        here as soon as its HELLO arrives, before any STATUS of the new boot."""
        return self._hello.boot_id if self._hello is not None else None

    def frame_counts(self) -> tuple[int, int]:
        """(frames received intact, frames missed) from the firmware, cumulative across
        reconnects; a missed frame is a gap in the firmware's sequence numbers, which is also
        where a frame lost to a CRC error shows up (SR-LINK-3)."""
        rx = self._rx_seq.stats
        return rx.received, rx.missed

    def latest(self) -> StatusSnapshot | None:
        """The most recent STATUS (None before the first). Judge its age from ``received_ms``."""
        return self._latest

    # ------------------------------------------------------------------ commands

    def set_speed(self, speed_kmh: float, accel_kmh_s: float, lease_ms: int) -> bool:
        """Send SET_SPEED now. Returns False, and sends nothing, unless the link is ready.

        Never queued, never retransmitted: the next control tick sends a fresh one, and the
        firmware stops the belt when the lease runs out. Out-of-range values raise
        :class:`~firmware_bridge.wire.messages.MessageError` (a controller bug, not a link issue).
        """
        msg = SetSpeed(speed_kmh=speed_kmh, accel_kmh_s=accel_kmh_s, lease_ms=lease_ms)
        if self._phase is not _Phase.READY:
            self._motion_dropped += 1
            return False
        self._send(msg)
        return True

    def stop(self, decel_kmh_s: float) -> bool:
        """Controlled stop at ``decel_kmh_s``; sent whenever the port is open, retransmitted
        until ACKed. False when no port is open (the firmware lease stops the belt then)."""
        return self._send_reliable_any_phase(Stop(decel_kmh_s=decel_kmh_s))

    def estop(self) -> bool:
        """Emergency stop; sent whenever the port is open, retransmitted until ACKed."""
        return self._send_reliable_any_phase(EStop())

    def clear_fault(self) -> bool:
        """Ask the firmware to clear its latched fault (it refuses unless the belt is at rest,
        and never restarts the belt). Only once the handshake has reached the firmware's
        state (ready, or waiting for a faulted firmware to be cleared); False otherwise."""
        if self._phase not in (_Phase.READY, _Phase.WAIT_IDLE):
            return False
        self._send(ClearFault(), reliable=True)
        return True

    def request_status(self) -> bool:
        """Ask for one STATUS now (GET_STATUS). Only with the link ready."""
        if self._phase is not _Phase.READY:
            return False
        self._send(GetStatus())
        return True

    # ------------------------------------------------------------------ run

    async def run(self) -> None:
        """Open, handshake, serve and reopen the port forever; returns only when cancelled.

        Each distinct failure (cannot open, handshake refused, link lost) is logged once at
        WARNING; while it repeats unchanged it is logged at DEBUG only.
        """
        failures = 0
        last_logged: str | None = None
        loop = asyncio.get_running_loop()
        previous_handler = loop.get_exception_handler()
        loop.set_exception_handler(self._exception_handler(previous_handler))
        try:
            while True:
                try:
                    if self._open_port is not None:
                        reader, writer = await self._open_port()
                    else:
                        reader, writer = await serial_asyncio_fast.open_serial_connection(
                            url=self._port, baudrate=self._baud, exclusive=True
                        )
                except (serial.SerialException, OSError, ValueError) as exc:
                    reason = (
                        f"cannot open serial port {self._port}: {exc}: check the cable, the "
                        "device path and that no other program holds the port"
                    )
                else:
                    self._opens += 1
                    handshakes_before = self._handshakes
                    reason = await self._serve(reader, writer)
                    if self._handshakes > handshakes_before:
                        failures = 0  # it worked for a while: start the backoff afresh
                        last_logged = reason  # _set_link logged the link loss already
                self._last_error = reason
                if reason != last_logged:
                    _LOG.warning("%s", reason)
                    last_logged = reason
                else:
                    _LOG.debug("%s", reason)
                failures += 1
                await asyncio.sleep(self._backoff_s(failures))
        finally:
            self._close_session("bridge stopped")
            loop.set_exception_handler(previous_handler)

    def _exception_handler(
        self, previous: Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object] | None
    ) -> Callable[[asyncio.AbstractEventLoop, dict[str, Any]], None]:
        """An unplugged port makes the serial transport report "Fatal write error" to the
        event loop, which logs it at ERROR with a traceback. For this bridge's own transports
        that is an expected link loss, already reported once at WARNING by the read loop:
        keep it at DEBUG. Everything else goes to the handler that was there before."""

        def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
            exc = context.get("exception")
            transport = context.get("transport")
            if (
                transport is not None
                and transport in self._transports
                and isinstance(exc, serial.SerialException | OSError)
            ):
                _LOG.debug("%s on %s: %s", context.get("message"), self._port, exc)
                return
            if previous is not None:
                previous(loop, context)
            else:
                loop.default_exception_handler(context)

        return handler

    def _backoff_s(self, failures: int) -> float:
        """Jittered exponential backoff: min * 2^(n-1), capped, times 0.75..1.25, capped."""
        base = self._reconnect_min_s * (2.0 ** max(0, failures - 1))
        jittered = min(base, self._reconnect_max_s) * self._rng.uniform(0.75, 1.25)
        return max(self._reconnect_min_s * 0.5, min(jittered, self._reconnect_max_s))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> str:
        """One session on an open port; returns why it ended. Cancellation propagates."""
        self._begin_session(writer)
        reason = "bridge stopped"
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._read_loop(reader), name="firmware-bridge-read")
                tg.create_task(self._supervise_loop(), name="firmware-bridge-supervise")
        except* _LinkDownError as group:
            first = group.exceptions[0]
            reason = first.reason if isinstance(first, _LinkDownError) else str(first)
        except* Exception as group:
            reason = f"internal error in the firmware bridge: {group.exceptions[0]!r}"
            raise
        finally:
            if self._phase is _Phase.MISMATCH and self._mismatch_error is not None:
                reason = f"{self._mismatch_error} ({reason})"
            self._close_session(reason)
        return reason

    def _begin_session(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._transports.add(writer.transport)
        transport_serial = writer.transport.get_extra_info("serial")
        if transport_serial is not None:
            # Drop bytes the firmware sent while nobody was listening: they are stale.
            with contextlib.suppress(serial.SerialException, OSError):
                transport_serial.reset_input_buffer()
        self._decoder.reset()
        self._rx_seq.reset()
        self._sender.clear()
        self._pending_names.clear()
        self._session_hello = None
        self._mismatch_error = None
        self._last_status_checksum = None
        self._last_uptime_ms = None
        now = self._clock_ms()
        self._last_rx_ms = now
        _LOG.debug("serial port %s opened at %d baud; handshaking", self._port, self._baud)
        self._start_handshake(now)

    def _close_session(self, reason: str) -> None:
        writer, self._writer = self._writer, None
        was_up = self._link_up
        self._enter_phase(_Phase.CLOSED)
        self._sender.clear()
        self._pending_names.clear()
        if writer is not None and not writer.transport.is_closing():
            # abort(), not close(): close() flushes with tcdrain, which can hang on a
            # device that has gone away. Nothing worth flushing is lost: no motion is queued.
            writer.transport.abort()
        if was_up:
            self._set_link(False, reason)

    def _set_link(self, up: bool, reason: str) -> None:
        if up == self._link_up:
            return
        self._link_up = up
        if up:
            _LOG.info("firmware link up on %s: %s", self._port, reason)
        else:
            _LOG.warning("firmware link down on %s: %s", self._port, reason)
        callback = self.on_link_change
        if callback is not None:
            callback(up, reason)

    # ------------------------------------------------------------------ handshake

    def _enter_phase(self, phase: _Phase) -> None:
        """Change the link phase. A change missing from the link-phase table
        (:data:`~firmware_bridge.wire.link_phases.LINK_TRANSITIONS`) is an internal error: it ends
        the session, so the link is down (no motion) and the bridge reconnects."""
        if not is_allowed(self._phase, phase):
            raise _LinkDownError(
                f"internal error: link phase {self._phase.value} -> {phase.value} is not in "
                "the link-phase table; reconnecting"
            )
        self._phase = phase

    def _start_handshake(self, now_ms: int) -> None:
        self._enter_phase(_Phase.HELLO)
        self._configure_attempts = 0
        self._hello_acked = False
        self._hello_answered = False
        self._configure_seq = None
        self._handshake_deadline_ms = now_ms + self._handshake_timeout_ms
        self._hello_seq = self._send(host_hello(), reliable=True)

    def _advance_handshake(self, now_ms: int) -> None:
        if self._phase is _Phase.HELLO and self._hello_acked and self._hello_answered:
            self._enter_phase(_Phase.FIRST_STATUS)

    def _send_configure(self) -> None:
        self._configure_attempts += 1
        if self._configure_attempts > _MAX_CONFIGURE_ATTEMPTS:
            raise _LinkDownError(
                f"the firmware refused CONFIGURE {_MAX_CONFIGURE_ATTEMPTS} times although it "
                "reports IDLE: check the firmware against docs/protocol.md §6"
            )
        self._enter_phase(_Phase.CONFIGURE)
        self._handshake_deadline_ms = self._clock_ms() + self._handshake_timeout_ms
        self._configure_seq = self._send(self._configure, reliable=True)

    def _handshake_on_status(self, status: Status) -> None:
        """FIRST_STATUS / WAIT_IDLE / CHECKSUM steps, driven by each STATUS."""
        matches = status.config_checksum == self._configure.config_checksum
        if self._phase is _Phase.FIRST_STATUS:
            if status.state is FwState.IDLE:
                self._send_configure()
            elif matches:
                # Not IDLE, so CONFIGURE would be refused, but this boot already holds our
                # limits (a reconnect without a firmware reset, e.g. to a faulted firmware
                # whose lease expired): the checksum echo is the proof protocol.md §8 asks.
                self._complete_handshake(status)
            else:
                self._enter_phase(_Phase.WAIT_IDLE)
                _LOG.warning(
                    "firmware is %s (fault %s) with config checksum %#06x, expected %#06x: "
                    "CONFIGURE is sent once it is IDLE (a latched fault needs a reset at rest)",
                    status.state.name,
                    status.fault.name,
                    status.config_checksum,
                    self._configure.config_checksum,
                )
        elif self._phase is _Phase.WAIT_IDLE:
            if matches:
                self._complete_handshake(status)
            elif status.state is FwState.IDLE:
                self._send_configure()
        elif self._phase is _Phase.CHECKSUM and matches:
            self._complete_handshake(status)

    def _complete_handshake(self, status: Status) -> None:
        hello = self._session_hello
        assert hello is not None  # noqa: S101 - STATUS is only handled after a HELLO
        self._enter_phase(_Phase.READY)
        self._handshakes += 1
        self._last_error = None
        self.ready.set()
        self._set_link(
            True,
            f"handshake complete: firmware {hello.fw_version}, boot_id {hello.boot_id:#010x}, "
            f"config checksum {status.config_checksum:#06x}, firmware state {status.state.name}",
        )

    def _on_hello(self, hello: Hello, now_ms: int) -> None:
        new_boot = self._known_boot_id is not None and hello.boot_id != self._known_boot_id
        self._hello = hello
        self._session_hello = hello
        first_boot_seen = self._known_boot_id is None
        self._known_boot_id = hello.boot_id
        if hello.protocol_version != PROTOCOL_VERSION:
            error = (
                f"firmware speaks protocol v{hello.protocol_version}, controller needs "
                f"v{PROTOCOL_VERSION}: update the firmware (firmware {hello.fw_version} on "
                f"{self._port}); only STOP and ESTOP will be sent to it"
            )
            if self._mismatch_error != error:
                _LOG.error("%s", error)
            self._mismatch_error = error
            self._last_error = error
            was_ready = self._phase is _Phase.READY
            self._enter_phase(_Phase.MISMATCH)
            self._sender.clear()
            self._pending_names.clear()
            if was_ready:
                self._set_link(False, error)
            return
        if new_boot:
            self._last_uptime_ms = None  # the new boot's uptime starts again from 0
        if new_boot and self.on_hello is not None:
            self.on_hello(hello)
        if new_boot and self._phase is not _Phase.HELLO:
            reason = (
                f"firmware rebooted: boot_id {hello.boot_id:#010x}, reset cause "
                f"{hello.reset_cause.name}, uptime {hello.uptime_ms} ms"
            )
            _LOG.warning("%s on %s; handshaking again", reason, self._port)
            self._set_link(False, reason)
            self._sender.clear()
            self._pending_names.clear()
            self._start_handshake(now_ms)
            return
        if first_boot_seen or new_boot:
            _LOG.info(
                "firmware %s, protocol v%d, boot_id %#010x, reset cause %s, ceilings %.2f km/h "
                "and %.2f km/h/s",
                hello.fw_version,
                hello.protocol_version,
                hello.boot_id,
                hello.reset_cause.name,
                hello.max_speed_kmh,
                hello.max_accel_kmh_s,
            )
        if self._phase is _Phase.MISMATCH:
            # Same boot now speaks our version (cannot happen without a reboot, but be exact).
            self._start_handshake(now_ms)
            return
        if self._phase is _Phase.HELLO:
            self._hello_answered = True
            self._advance_handshake(now_ms)

    def _on_ack(self, ack: Ack, now_ms: int) -> None:
        name = self._pending_names.pop(ack.seq, None)
        if not self._sender.on_ack(ack.seq):
            _LOG.debug("ACK for seq %d that was not pending", ack.seq)
            return
        if ack.seq == self._hello_seq and self._phase is _Phase.HELLO:
            self._hello_acked = True
            self._advance_handshake(now_ms)
        elif ack.seq == self._configure_seq and self._phase is _Phase.CONFIGURE:
            self._enter_phase(_Phase.CHECKSUM)
        elif name is not None:
            _LOG.debug("%s (seq %d) acknowledged", name, ack.seq)

    def _on_nak(self, nak: Nak, now_ms: int) -> None:
        self._naks += 1
        name = self._pending_names.pop(nak.seq, None)
        pending = self._sender.on_nak(nak.seq)
        label = name if name is not None else "SET_SPEED or unknown frame"
        text = f"firmware refused {label} (seq {nak.seq}): {nak.reason.name}"
        if (
            pending
            and nak.seq == self._configure_seq
            and self._phase is _Phase.CONFIGURE
            and nak.reason in (NakReason.REFUSED_IN_STATE, NakReason.BELT_MOVING)
        ):
            _LOG.warning("%s: CONFIGURE again once the firmware is IDLE", text)
            self._enter_phase(_Phase.WAIT_IDLE)
            return
        if pending and nak.seq == self._configure_seq and self._phase is _Phase.CONFIGURE:
            limits = self._limits
            raise _LinkDownError(
                f"{text}: CONFIGURE max_speed {limits.max_speed_kmh} km/h, max_accel "
                f"{limits.max_accel_kmh_s} km/h/s, max_decel {limits.max_decel_kmh_s} km/h/s, "
                f"max_lease {limits.max_lease_ms} ms; "
                + _configure_advice(nak.reason, self._session_hello)
            )
        if pending and nak.seq == self._hello_seq and self._phase is _Phase.HELLO:
            raise _LinkDownError(
                f"{text}: the firmware did not accept our HELLO (protocol "
                f"v{PROTOCOL_VERSION}); check the firmware version"
            )
        self._last_error = text
        _LOG.warning("%s", text)

    def _on_status(self, frame: Frame, status: Status, now_ms: int) -> None:
        hello = self._session_hello
        if hello is None or self._phase is _Phase.MISMATCH:
            # No HELLO yet in this session (the boot it belongs to is unknown), or the
            # firmware speaks another protocol version (its STATUS cannot be trusted).
            return
        self._last_status_checksum = status.config_checksum
        previous_uptime, self._last_uptime_ms = self._last_uptime_ms, status.uptime_ms
        if (
            previous_uptime is not None
            and status.uptime_ms + _UPTIME_BACKSTEP_MS < previous_uptime < _UPTIME_WRAP_GUARD_MS
        ):
            # The firmware restarted and its HELLO was lost: this STATUS is from an unknown
            # boot. Drop it and handshake again; the new HELLO names the boot.
            reason = (
                f"firmware restarted: STATUS uptime went back from {previous_uptime} to "
                f"{status.uptime_ms} ms and its HELLO was lost"
            )
            _LOG.warning("%s on %s; handshaking again", reason, self._port)
            self._session_hello = None
            self._last_uptime_ms = None
            self._set_link(False, reason)
            self._sender.clear()
            self._pending_names.clear()
            self._start_handshake(now_ms)
            return
        self._latest = StatusSnapshot(
            status=status,
            received_ms=now_ms,
            boot_id=hello.boot_id,
            config_checksum_expected=self._configure.config_checksum,
            seq=frame.seq,
        )
        self._handshake_on_status(status)

    # ------------------------------------------------------------------ I/O loops

    async def _read_loop(self, reader: asyncio.StreamReader) -> None:
        while True:
            try:
                data = await reader.read(_READ_CHUNK)
            except (serial.SerialException, OSError) as exc:
                raise _LinkDownError(f"serial read failed (device unplugged?): {exc}") from exc
            if not data:
                raise _LinkDownError("serial port closed (end of file)")
            now = self._clock_ms()
            for frame in self._decoder.feed(data):
                self._on_frame(frame, now)
            for reject in self._decoder.take_rejects():
                # A CRC-valid frame we cannot read: firmware of another version, or a bug.
                _LOG.warning("firmware frame refused: %s", reject.reason)

    def _on_frame(self, frame: Frame, now_ms: int) -> None:
        self._last_rx_ms = now_ms
        msg = frame.message
        verdict = self._rx_seq.check(frame.seq)
        if isinstance(msg, Hello):
            # A HELLO restarts the firmware's counter after a boot: never a duplicate.
            self._rx_seq.reset()
            self._rx_seq.check(frame.seq)
            self._on_hello(msg, now_ms)
            return
        if verdict.kind is SeqKind.DUPLICATE:
            return
        if isinstance(msg, Status):
            self._on_status(frame, msg, now_ms)
        elif isinstance(msg, Ack):
            self._on_ack(msg, now_ms)
        elif isinstance(msg, Nak):
            self._on_nak(msg, now_ms)
        elif isinstance(msg, FaultReport):
            _LOG.warning("firmware reports fault %s (detail %d)", msg.code.name, msg.detail)
        else:
            _LOG.warning(
                "firmware sent %s (seq %d), which only the host sends; ignored",
                type(msg).__name__,
                frame.seq,
            )

    def _supervise_next_ms(self, now_ms: int) -> int:
        """The earliest time the supervisor has something to check (see _supervise_loop)."""
        next_ms = min(self._last_rx_ms + self._link_timeout_ms + 1, now_ms + SUPERVISE_MAX_SLEEP_MS)
        due_ms = self._sender.next_due_ms()
        if due_ms is not None:
            next_ms = min(next_ms, due_ms)
        if self._phase in _TIMED_PHASES:
            next_ms = min(next_ms, self._handshake_deadline_ms + 1)
        return next_ms

    async def _supervise_sleep(self, delay_s: float) -> None:
        """Sleep ``delay_s``, or less if a frame that needs an ACK is sent meanwhile."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._supervisor_waiter = waiter
        handle = loop.call_later(delay_s, _wake_waiter, waiter)
        try:
            await waiter
        finally:
            handle.cancel()
            self._supervisor_waiter = None

    async def _supervise_loop(self) -> None:
        """Retransmits, unanswered frames, link silence and the handshake deadline, each
        checked when its deadline comes (no fixed-rate polling)."""
        while True:
            now = self._clock_ms()
            await self._supervise_sleep(max(1, self._supervise_next_ms(now) - now) / 1000.0)
            now = self._clock_ms()
            for frame_bytes in self._sender.due(now):
                self._write(frame_bytes)
            failed = self._sender.failed(now)
            if failed and self._hello_seq in failed and self._phase is _Phase.HELLO:
                raise _LinkDownError(
                    f"no answer from the firmware to HELLO after {self._sender.max_retries} "
                    "retransmissions: check that the firmware is running, the cable, and that "
                    f"the baud rate ({self._baud}) matches"
                )
            if failed:
                names = ", ".join(
                    f"{self._pending_names.pop(seq, 'frame')} (seq {seq})" for seq in failed
                )
                raise _LinkDownError(
                    f"no ACK from the firmware for {names} after "
                    f"{self._sender.max_retries} retransmissions"
                )
            silent_ms = now - self._last_rx_ms
            if silent_ms > self._link_timeout_ms:
                raise _LinkDownError(
                    f"no valid frame from the firmware for {silent_ms} ms "
                    f"(link timeout {self._link_timeout_ms} ms)"
                )
            if self._phase in _TIMED_PHASES and now > self._handshake_deadline_ms:
                raise _LinkDownError(self._handshake_timeout_reason())

    def _handshake_timeout_reason(self) -> str:
        head = f"handshake did not complete within {self._handshake_timeout_ms} ms"
        if self._phase is _Phase.CHECKSUM and self._last_status_checksum is not None:
            return (
                f"{head}: the firmware accepted CONFIGURE but its STATUS echoes config "
                f"checksum {self._last_status_checksum:#06x}, expected "
                f"{self._configure.config_checksum:#06x}: the firmware did not apply the limits"
            )
        if self._phase is _Phase.HELLO:
            return (
                f"{head}: no HELLO answer from the firmware: check that it is running and that "
                f"the baud rate ({self._baud}) matches"
            )
        return f"{head} (stuck waiting for {self._phase.value})"

    def _send(self, msg: Message, *, reliable: bool = False) -> int:
        seq = self._seq.next()
        frame = encode_frame(seq, msg)
        if reliable:
            self._sender.track(seq, frame, self._clock_ms())
            self._pending_names[seq] = msg.MSG_ID.name
            waiter = self._supervisor_waiter
            if waiter is not None:
                _wake_waiter(waiter)  # its retransmit deadline may be earlier than the sleep
        self._write(frame)
        return seq

    def _send_reliable_any_phase(self, msg: Message) -> bool:
        if self._writer is None:
            self._motion_dropped += 1
            return False
        self._send(msg, reliable=True)
        return True

    def _write(self, frame: bytes) -> None:
        writer = self._writer
        if writer is None:
            return
        writer.write(frame)
        self._frames_tx += 1


def _wake_waiter(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _configure_advice(reason: NakReason, hello: Hello | None) -> str:
    if reason is NakReason.ABOVE_CEILING and hello is not None:
        return (
            f"the firmware's compiled-in ceilings are {hello.max_speed_kmh} km/h and "
            f"{hello.max_accel_kmh_s} km/h/s: lower the configured limits"
        )
    if reason is NakReason.BELT_MOVING:
        return "the belt is moving: the firmware accepts CONFIGURE only at rest"
    return "check the configured firmware limits against docs/protocol.md"
