"""Async serial bridge to the motor-controller firmware: the only module that opens the port.

:class:`FirmwareBridge` owns the serial port for the life of the service. Its :meth:`run`
task opens the port (by path, including ``/dev/serial/by-id/...`` links, with an exclusive
lock), reads and writes frames, and when the port disappears or falls silent closes it and
opens it again with jittered exponential backoff, forever, until cancelled. What to send and
when, the handshake, the boot and version checks, retransmits, silence and the back-off are
decided by the pure :class:`~firmware_bridge.wire.session.LinkSession` (protocol.md §7-8);
this module carries out its actions and keeps the tasks and timers.

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

from controller.errors import TreadmillError
from firmware_bridge.port.reader import PushStreamReader, open_serial_port
from firmware_bridge.wire.codec import FrameDecoder
from firmware_bridge.wire.messages import EStop, Hello, SetSpeed, Stop
from firmware_bridge.wire.session import LinkSession
from firmware_bridge.wire.session_actions import (
    JITTER_RANGE,
    Action,
    EndSession,
    FirmwareLimits,
    LinkReport,
    NewBoot,
    Note,
    Send,
    StatusSnapshot,
)

__all__ = [
    "FirmwareBridge",
    "FirmwareLimits",
    "LinkStats",
    "StatusSnapshot",
]

_LOG = logging.getLogger(__name__)

#: Bytes asked of the push reader's read(), which only ends the session (EOF or error).
_READ_CHUNK = 1024


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


class _LinkDownError(TreadmillError):
    """Internal: the current session ended; ``reason`` says why (logged once)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class FirmwareBridge:
    """Owns the serial link to the firmware. See the module docstring for the rules it keeps.

    The link's logic (handshake, boot and version checks, link reports, retransmits, silence,
    reconnect back-off) is :class:`~firmware_bridge.wire.session.LinkSession`, a pure object;
    this class opens and reads the port, keeps its timers and carries out what the session
    returns. ``clock_ms`` is the service's monotonic millisecond clock; every time stamp and
    timeout of the bridge uses it. ``on_link_change(connected, reason)`` is called once per
    link up and link down; ``on_hello(hello)`` for every firmware HELLO that announces a new
    boot while the bridge already knew an earlier one (an unexpected firmware reset).
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
        open_port: Callable[[], Awaitable[tuple[PushStreamReader, asyncio.StreamWriter]]]
        | None = None,
    ) -> None:
        if not port:
            raise ValueError("FirmwareBridge port is empty: give the serial device path")
        if baud <= 0:
            raise ValueError(f"FirmwareBridge baud = {baud!r} must be > 0")
        self._port = port
        self._baud = baud
        # Range-checks the limits now (MessageError names the field) and fixes the checksum.
        self._session = LinkSession(
            limits,
            port=port,
            baud=baud,
            handshake_timeout_ms=handshake_timeout_ms,
            link_timeout_ms=link_timeout_ms,
            reconnect_min_s=reconnect_min_s,
            reconnect_max_s=reconnect_max_s,
        )
        self._clock_ms = clock_ms
        self._rng = rng if rng is not None else random.Random()  # noqa: S311 - backoff jitter, not cryptography
        self.on_link_change = on_link_change
        self.on_hello = on_hello
        # Opens the link; None: the serial device ``port`` (an in-memory simulator passes its
        # own, see firmware_bridge.sim.memory).
        self._open_port = open_port
        self.ready = asyncio.Event()

        self._decoder = FrameDecoder()
        self._supervisor_waiter: asyncio.Future[None] | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._transports: weakref.WeakSet[asyncio.BaseTransport] = weakref.WeakSet()
        self._frames_tx = 0
        # The last SET_SPEED and the arguments it was built from: a steady belt sends the
        # same one every tick, checked and encoded once (only its SEQ and CRC change).
        self._speed_msg: SetSpeed | None = None
        self._speed_args: tuple[float, float, int] | None = None

    # ------------------------------------------------------------------ state

    @property
    def port(self) -> str:
        return self._port

    @property
    def link_session(self) -> LinkSession:
        """The link's logic (read it, never drive it: the bridge feeds it)."""
        return self._session

    @property
    def connected(self) -> bool:
        """True while the port is open and the handshake of this session is complete."""
        return self._session.connected

    @property
    def hello(self) -> Hello | None:
        """The latest HELLO the firmware sent (kept across link losses)."""
        return self._session.hello

    @property
    def expected_config_checksum(self) -> int:
        """The checksum of our CONFIGURE; STATUS must echo it."""
        return self._session.expected_config_checksum

    @property
    def stats(self) -> LinkStats:
        dec = self._decoder.stats
        session = self._session
        rx = session.rx_seq.stats
        return LinkStats(
            connected=session.connected,
            handshakes=session.session,
            reconnects=max(0, session.opens - 1),
            frames_rx=dec.frames,
            frames_tx=self._frames_tx,
            crc_errors=dec.crc_errors,
            resyncs=dec.resyncs,
            bytes_skipped=dec.bytes_skipped,
            retransmits=session.retransmits,
            naks=session.naks,
            rx_seq_gaps=rx.gaps,
            rx_duplicates=rx.duplicates,
            motion_dropped_link_down=session.motion_dropped,
            last_error=session.last_error,
        )

    @property
    def session(self) -> int:
        """Completed handshakes since the bridge was created: a new value means the link was
        lost and set up again, however briefly (the controller latches a fault, SR-LINK-1)."""
        return self._session.session

    @property
    def boot_id(self) -> int | None:
        """The boot id of the firmware's latest HELLO (None before the first): a reboot shows
        here as soon as its HELLO arrives, before any STATUS of the new boot."""
        return self._session.boot_id

    def frame_counts(self) -> tuple[int, int]:
        """(frames received intact, frames missed) from the firmware, cumulative across
        reconnects; a missed frame is a gap in the firmware's sequence numbers, which is also
        where a frame lost to a CRC error shows up (SR-LINK-3)."""
        rx = self._session.rx_seq.stats
        return rx.received, rx.missed

    def latest(self) -> StatusSnapshot | None:
        """The most recent STATUS (None before the first). Judge its age from ``received_ms``."""
        return self._session.latest()

    # ------------------------------------------------------------------ commands

    def set_speed(self, speed_kmh: float, accel_kmh_s: float, lease_ms: int) -> bool:
        """Send SET_SPEED now. Returns False, and sends nothing, unless the link is ready.

        Never queued, never retransmitted: the next control tick sends a fresh one, and the
        firmware stops the belt when the lease runs out. Out-of-range values raise
        :class:`~firmware_bridge.wire.messages.MessageError` (a controller bug, not a link issue).
        """
        args = (speed_kmh, accel_kmh_s, lease_ms)
        msg = self._speed_msg
        if msg is None or args != self._speed_args:  # range-checked once per new value
            msg = SetSpeed(speed_kmh=speed_kmh, accel_kmh_s=accel_kmh_s, lease_ms=lease_ms)
            self._speed_msg, self._speed_args = msg, args
        frame = self._session.set_speed(msg)
        if frame is None:
            return False
        self._write(frame)
        return True

    def stop(self, decel_kmh_s: float) -> bool:
        """Controlled stop at ``decel_kmh_s``; sent whenever the port is open, retransmitted
        until ACKed. False when no port is open (the firmware lease stops the belt then)."""
        return self._write_reliable(self._session.stop(Stop(decel_kmh_s), self._clock_ms()))

    def estop(self) -> bool:
        """Emergency stop; sent whenever the port is open, retransmitted until ACKed."""
        return self._write_reliable(self._session.stop(EStop(), self._clock_ms()))

    def clear_fault(self) -> bool:
        """Ask the firmware to clear its latched fault (it refuses unless the belt is at rest,
        and never restarts the belt). Only once the handshake has reached the firmware's
        state (ready, or waiting for a faulted firmware to be cleared); False otherwise."""
        return self._write_reliable(self._session.clear_fault(self._clock_ms()))

    def request_status(self) -> bool:
        """Ask for one STATUS now (GET_STATUS). Only with the link ready."""
        frame = self._session.request_status()
        if frame is None:
            return False
        self._write(frame)
        return True

    # ------------------------------------------------------------------ run

    async def run(self) -> None:
        """Open, handshake, serve and reopen the port forever; returns only when cancelled.

        Each distinct failure (cannot open, handshake refused, link lost) is logged once at
        WARNING; while it repeats unchanged it is logged at DEBUG only.
        """
        loop = asyncio.get_running_loop()
        previous_handler = loop.get_exception_handler()
        loop.set_exception_handler(self._exception_handler(previous_handler))
        try:
            while True:
                try:
                    if self._open_port is not None:
                        reader, writer = await self._open_port()
                    else:
                        reader, writer = await open_serial_port(self._port, self._baud)
                except (serial.SerialException, OSError, ValueError) as exc:
                    reason = (
                        f"cannot open serial port {self._port}: {exc}: check the cable, the "
                        "device path and that no other program holds the port"
                    )
                else:
                    reason = await self._serve(reader, writer)
                delay_s, note = self._session.retry(reason, self._rng.uniform(*JITTER_RANGE))
                _LOG.log(note.level, "%s", note.text)
                await asyncio.sleep(delay_s)
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

    async def _serve(self, reader: PushStreamReader, writer: asyncio.StreamWriter) -> str:
        """One session on an open port; returns why it ended. Cancellation propagates."""
        reason = "bridge stopped"
        try:
            self._begin_session(writer)
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
            reason = self._close_session(reason)
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
        self._carry_out(self._session.port_opened(self._clock_ms()))

    def _close_session(self, reason: str) -> str:
        """Close the port (if open); the link is down. Returns the reason as reported."""
        writer, self._writer = self._writer, None
        reason, actions = self._session.port_closed(reason)
        if writer is not None and not writer.transport.is_closing():
            # abort(), not close(): close() flushes with tcdrain, which can hang on a
            # device that has gone away. Nothing worth flushing is lost: no motion is queued.
            writer.transport.abort()
        self._carry_out(actions)
        return reason

    def _carry_out(self, actions: list[Action]) -> None:
        """Do what the link session says, in order; its end ends the port session."""
        for action in actions:
            if isinstance(action, Send):
                self._write(action.frame)
                if action.reliable:
                    self._wake_supervisor()  # its retransmit deadline may be earlier
            elif isinstance(action, Note):
                _LOG.log(action.level, "%s", action.text)
            elif isinstance(action, LinkReport):
                self._report_link(action)
            elif isinstance(action, NewBoot):
                if self.on_hello is not None:
                    self.on_hello(action.hello)
            elif isinstance(action, EndSession):
                raise _LinkDownError(action.reason)

    def _report_link(self, report: LinkReport) -> None:
        if report.up:
            self.ready.set()
            _LOG.info("firmware link up on %s: %s", self._port, report.reason)
        else:
            _LOG.warning("firmware link down on %s: %s", self._port, report.reason)
        callback = self.on_link_change
        if callback is not None:
            callback(report.up, report.reason)

    # ------------------------------------------------------------------ I/O loops

    async def _read_loop(self, reader: PushStreamReader) -> None:
        """Frames are handled as their bytes arrive (:meth:`_on_bytes`, called from the
        transport); this task ends the session when the port fails, reaches end of file or
        the session ends it."""
        reader.attach(lambda data: self._on_bytes(reader, data))
        try:
            data = await reader.read(_READ_CHUNK)  # returns only at end of file: b""
        except (serial.SerialException, OSError) as exc:
            raise _LinkDownError(f"serial read failed (device unplugged?): {exc}") from exc
        if data:
            raise RuntimeError("bytes bypassed the push reader's sink")  # a reader bug
        raise _LinkDownError("serial port closed (end of file)")

    def _on_bytes(self, reader: PushStreamReader, data: bytes) -> None:
        """Decode ``data`` and carry out what the session makes of each frame. Called from
        the transport's callback, so it never raises: a failure ends the read loop."""
        try:
            now = self._clock_ms()
            for frame in self._decoder.feed(data):
                self._carry_out(self._session.frame_received(frame, now))
            for reject in self._decoder.take_rejects():
                # A CRC-valid frame we cannot read: firmware of another version, or a bug.
                _LOG.warning("firmware frame refused: %s", reject.reason)
        except Exception as exc:  # handed to the read loop, which raises it
            reader.fail(exc)

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
        checked by the session when its deadline comes (no fixed-rate polling)."""
        session = self._session
        while True:
            now = self._clock_ms()
            await self._supervise_sleep(max(1, session.next_poll_ms(now) - now) / 1000.0)
            self._carry_out(session.poll(self._clock_ms()))

    def _wake_supervisor(self) -> None:
        waiter = self._supervisor_waiter
        if waiter is not None:
            _wake_waiter(waiter)

    def _write_reliable(self, frame: bytes | None) -> bool:
        if frame is None:
            return False
        self._wake_supervisor()  # its retransmit deadline may be earlier than the sleep
        self._write(frame)
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
