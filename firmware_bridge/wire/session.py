"""The host's link session as a pure object: handshake, boot and version checks, link reports,
retransmits, silence and reconnect back-off, fed frames, port events and time (protocol.md §7-8).

:class:`LinkSession` does no I/O and reads no clock (like h11's connection): the serial
bridge feeds it what happened, with ``now_ms``, and carries out the actions it returns, in
order (``session_actions``). Every phase change goes through the link-phase table
(``link_phases``); a change missing from it ends the port session with an internal error.

Example:
    >>> session = LinkSession(FirmwareLimits(8.0, 0.5, 3.6, 300), port="/dev/ttyX")
    >>> [type(a).__name__ for a in session.port_opened(now_ms=0)]
    ['Note', 'Send']
    >>> session.phase.name, session.connected
    ('HELLO', False)
    >>> session.set_speed(SetSpeed(1.0, 0.2, 300)) is None  # no motion before the handshake
    True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from controller.errors import TreadmillError
from firmware_bridge.wire.codec import Frame, encode_frame, frame_bytes
from firmware_bridge.wire.link import ReliableSender, RxSequenceChecker, SeqKind, SequenceCounter
from firmware_bridge.wire.link_phases import LinkPhase, is_allowed
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
    MsgId,
    Nak,
    NakReason,
    SetSpeed,
    Status,
    Stop,
    encode_message,
    host_hello,
)
from firmware_bridge.wire.session_actions import (
    DEBUG,
    ERROR,
    INFO,
    WARNING,
    Action,
    EndSession,
    FirmwareLimits,
    LinkReport,
    NewBoot,
    Note,
    ReconnectPolicy,
    Send,
    StatusSnapshot,
    configure_refused_text,
    handshake_timeout_text,
    hello_text,
    mismatch_text,
    not_idle_text,
    reboot_text,
)

#: Longest time between two polls (ms). The bridge polls when the earliest of the session's
#: deadlines comes, and at once when a frame that needs an ACK is sent; this bound only
#: limits how long it trusts its own arithmetic.
POLL_MAX_MS: Final = 100
#: CONFIGUREs refused (firmware not IDLE) in one session before giving up on the session.
MAX_CONFIGURE_ATTEMPTS: Final = 3
#: STATUS uptime going back by more than this (ms) means the firmware restarted.
UPTIME_BACKSTEP_MS: Final = 1000
#: ... unless it was about to wrap at 2^32 ms (49.7 days).
UPTIME_WRAP_GUARD_MS: Final = (1 << 32) - 60_000
#: Handshake steps that must end within ``handshake_timeout_ms``.
TIMED_PHASES: Final = frozenset(
    {LinkPhase.HELLO, LinkPhase.FIRST_STATUS, LinkPhase.CONFIGURE, LinkPhase.CHECKSUM}
)


class _SessionEndError(TreadmillError):
    """Internal: the current port session ends; the message says why."""


class LinkSession:
    """The host's side of the link to one firmware, across port sessions (protocol.md §7-8).

    ``limits`` go out in CONFIGURE (range-checked now: MessageError names the field) and
    its checksum must come back in STATUS; ``port`` and ``baud`` only label messages. Times
    are integer milliseconds of one monotonic clock. ``opens``, ``naks`` and
    ``motion_dropped`` (SET_SPEED/STOP/ESTOP refused with the link or port down) count since
    the session object was made; ``last_error`` is the latest problem, None once linked.
    """

    def __init__(
        self,
        limits: FirmwareLimits,
        *,
        port: str,
        baud: int = 115200,
        handshake_timeout_ms: int = 1000,
        link_timeout_ms: int = 500,
        reconnect_min_s: float = 0.2,
        reconnect_max_s: float = 5.0,
    ) -> None:
        if handshake_timeout_ms <= 0 or link_timeout_ms <= 0:
            raise ValueError(
                f"link timeouts must be > 0 ms: handshake {handshake_timeout_ms!r}, "
                f"link {link_timeout_ms!r}"
            )
        self._limits = limits
        self._configure = Configure.with_checksum(
            limits.max_speed_kmh,
            limits.max_accel_kmh_s,
            limits.max_decel_kmh_s,
            limits.max_lease_ms,
        )
        self._port = port
        self._baud = baud
        self._handshake_timeout_ms = handshake_timeout_ms
        self._link_timeout_ms = link_timeout_ms
        self.reconnect = ReconnectPolicy(reconnect_min_s, reconnect_max_s)

        self._seq = SequenceCounter()
        self._rx_seq = RxSequenceChecker()
        self._sender = ReliableSender()
        self._pending_names: dict[int, str] = {}
        self._out: list[Action] = []
        self._speed_msg: SetSpeed | None = None  # the last SET_SPEED sent ...
        self._speed_payload = b""  # ... and its payload
        self._open = False
        self._phase = LinkPhase.CLOSED
        self._session_hello: Hello | None = None  # HELLO received in this port session
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
        self._handshake_this_port = False
        self.opens = 0
        self.naks = 0
        self.motion_dropped = 0
        self.last_error: str | None = None

    # ------------------------------------------------------------------ what it knows

    @property
    def phase(self) -> LinkPhase:
        return self._phase

    @property
    def connected(self) -> bool:
        """True while the port is open and the handshake of this session is complete."""
        return self._phase is LinkPhase.READY

    @property
    def port_open(self) -> bool:
        return self._open

    @property
    def hello(self) -> Hello | None:
        """The latest HELLO the firmware sent (kept across link losses)."""
        return self._hello

    @property
    def boot_id(self) -> int | None:
        """The boot id of the firmware's latest HELLO (None before the first)."""
        return self._hello.boot_id if self._hello is not None else None

    @property
    def session(self) -> int:
        """Completed handshakes: a new value means the link was lost and set up again,
        however briefly (the controller latches a fault, SR-LINK-1)."""
        return self._handshakes

    @property
    def retransmits(self) -> int:
        return self._sender.stats.retransmits

    @property
    def expected_config_checksum(self) -> int:
        return self._configure.config_checksum

    @property
    def rx_seq(self) -> RxSequenceChecker:
        """The firmware's sequence numbers as received (gaps, duplicates, SR-LINK-3)."""
        return self._rx_seq

    def latest(self) -> StatusSnapshot | None:
        """The most recent STATUS (None before the first), kept across link losses."""
        return self._latest

    # ------------------------------------------------------------------ port events

    def port_opened(self, now_ms: int) -> list[Action]:
        """The port is open: a new port session starts with the host's HELLO (§8 step 2)."""
        self.opens += 1
        self._open = True
        self._handshake_this_port = False
        self._rx_seq.reset()
        self._sender.clear()
        self._pending_names.clear()
        self._session_hello = None
        self._mismatch_error = None
        self._last_status_checksum = None
        self._last_uptime_ms = None
        self._last_rx_ms = now_ms
        self._out.append(
            Note(DEBUG, f"serial port {self._port} opened at {self._baud} baud; handshaking")
        )
        return self._run(self._start_handshake, now_ms)

    def port_closed(self, reason: str) -> tuple[str, list[Action]]:
        """The port session ended (or the bridge stopped): the link is down. Returns the
        reason as reported (a version mismatch names itself) and the actions. Idempotent."""
        if self._phase is LinkPhase.MISMATCH and self._mismatch_error is not None:
            reason = f"{self._mismatch_error} ({reason})"
        self._open = False
        was_up = self._link_up
        self._enter_phase(LinkPhase.CLOSED)  # in the table from every phase
        self._sender.clear()
        self._pending_names.clear()
        if was_up:
            self._set_link(False, reason)
        return reason, self._take()

    def retry(self, reason: str, jitter: float) -> tuple[float, Note]:
        """After a port session ended, or the port could not be opened, for ``reason``: the
        delay (s) before the next open and the log line (:class:`ReconnectPolicy`)."""
        self.last_error = reason
        handshook, self._handshake_this_port = self._handshake_this_port, False
        return self.reconnect.after(reason, handshook=handshook, jitter=jitter)

    # ------------------------------------------------------------------ frames and time

    def frame_received(self, frame: Frame, now_ms: int) -> list[Action]:
        """A frame decoded from the port at ``now_ms``."""
        return self._run(self._on_frame, frame, now_ms)

    def next_poll_ms(self, now_ms: int) -> int:
        """The earliest time :meth:`poll` has something to check: a retransmit, the link's
        silence timeout or the handshake deadline (at most :data:`POLL_MAX_MS` ahead)."""
        next_ms = min(self._last_rx_ms + self._link_timeout_ms + 1, now_ms + POLL_MAX_MS)
        due_ms = self._sender.next_due_ms()
        if due_ms is not None:
            next_ms = min(next_ms, due_ms)
        if self._phase in TIMED_PHASES:
            next_ms = min(next_ms, self._handshake_deadline_ms + 1)
        return next_ms

    def poll(self, now_ms: int) -> list[Action]:
        """Retransmits due, unanswered frames, link silence and the handshake deadline."""
        return self._run(self._poll, now_ms)

    # ------------------------------------------------------------------ commands

    def set_speed(self, msg: SetSpeed) -> bytes | None:
        """The SET_SPEED frame to write now, or None (nothing sent) unless the link is ready.

        Never queued, never retransmitted: the next control tick sends a fresh one, and the
        firmware stops the belt when the lease runs out.
        """
        if self._phase is not LinkPhase.READY:
            self.motion_dropped += 1
            return None
        if msg is not self._speed_msg:  # the payload of an unchanged SET_SPEED is kept
            self._speed_msg = msg
            self._speed_payload = encode_message(msg)[1]
        return frame_bytes(self._seq.next(), MsgId.SET_SPEED, self._speed_payload)

    def stop(self, msg: Stop | EStop, now_ms: int) -> bytes | None:
        """The STOP or ESTOP frame to write, whenever the port is open, handshake or not
        (retransmitted until ACKed); None when no port is open."""
        if not self._open:
            self.motion_dropped += 1
            return None
        return self._send_reliable(msg, now_ms)[1]

    def clear_fault(self, now_ms: int) -> bytes | None:
        """CLEAR_FAULT, once the handshake has reached the firmware's state (ready, or
        waiting for a faulted firmware to be cleared); None otherwise."""
        if self._phase not in (LinkPhase.READY, LinkPhase.WAIT_IDLE):
            return None
        return self._send_reliable(ClearFault(), now_ms)[1]

    def request_status(self) -> bytes | None:
        """GET_STATUS, only with the link ready."""
        if self._phase is not LinkPhase.READY:
            return None
        return encode_frame(self._seq.next(), GetStatus())

    # ------------------------------------------------------------------ internals

    def _take(self) -> list[Action]:
        out, self._out = self._out, []
        return out

    def _run(self, step: Callable[..., None], *args: object) -> list[Action]:
        """Run one input step; a session end raised inside becomes an EndSession action."""
        try:
            step(*args)
        except _SessionEndError as end:
            self._out.append(EndSession(str(end)))
        return self._take()

    def _send_reliable(self, msg: Message, now_ms: int) -> tuple[int, bytes]:
        seq = self._seq.next()
        frame = encode_frame(seq, msg)
        self._sender.track(seq, frame, now_ms)
        self._pending_names[seq] = msg.MSG_ID.name
        return seq, frame

    def _send_handshake(self, msg: Message, now_ms: int) -> int:
        """Send a handshake frame (HELLO, CONFIGURE), tracked until ACKed; its SEQ."""
        seq, frame = self._send_reliable(msg, now_ms)
        self._out.append(Send(frame, reliable=True))
        return seq

    def _set_link(self, up: bool, reason: str) -> None:
        if up == self._link_up:
            return
        self._link_up = up
        self._out.append(LinkReport(up, reason))

    def _enter_phase(self, phase: LinkPhase) -> None:
        """Change the link phase. A change missing from the link-phase table
        (:data:`~firmware_bridge.wire.link_phases.LINK_TRANSITIONS`) is an internal error: it
        ends the session, so the link is down (no motion) and the bridge reconnects."""
        if not is_allowed(self._phase, phase):
            raise _SessionEndError(
                f"internal error: link phase {self._phase.value} -> {phase.value} is not in "
                "the link-phase table; reconnecting"
            )
        self._phase = phase

    def _start_handshake(self, now_ms: int) -> None:
        self._enter_phase(LinkPhase.HELLO)
        self._configure_attempts = 0
        self._hello_acked = False
        self._hello_answered = False
        self._configure_seq = None
        self._handshake_deadline_ms = now_ms + self._handshake_timeout_ms
        self._hello_seq = self._send_handshake(host_hello(), now_ms)

    def _advance_handshake(self) -> None:
        if self._phase is LinkPhase.HELLO and self._hello_acked and self._hello_answered:
            self._enter_phase(LinkPhase.FIRST_STATUS)

    def _send_configure(self, now_ms: int) -> None:
        self._configure_attempts += 1
        if self._configure_attempts > MAX_CONFIGURE_ATTEMPTS:
            raise _SessionEndError(
                f"the firmware refused CONFIGURE {MAX_CONFIGURE_ATTEMPTS} times although it "
                "reports IDLE: check the firmware against docs/protocol.md §6"
            )
        self._enter_phase(LinkPhase.CONFIGURE)
        self._handshake_deadline_ms = now_ms + self._handshake_timeout_ms
        self._configure_seq = self._send_handshake(self._configure, now_ms)

    def _handshake_on_status(self, status: Status, now_ms: int) -> None:
        """FIRST_STATUS / WAIT_IDLE / CHECKSUM steps, driven by each STATUS."""
        matches = status.config_checksum == self._configure.config_checksum
        if self._phase is LinkPhase.FIRST_STATUS:
            if status.state is FwState.IDLE:
                self._send_configure(now_ms)
            elif matches:
                # Not IDLE, so CONFIGURE would be refused, but this boot already holds our
                # limits (a reconnect without a firmware reset, e.g. to a faulted firmware
                # whose lease expired): the checksum echo is the proof protocol.md §8 asks.
                self._complete_handshake(status)
            else:
                self._enter_phase(LinkPhase.WAIT_IDLE)
                expected = self._configure.config_checksum
                self._out.append(Note(WARNING, not_idle_text(status, expected)))
        elif self._phase is LinkPhase.WAIT_IDLE:
            if matches:
                self._complete_handshake(status)
            elif status.state is FwState.IDLE:
                self._send_configure(now_ms)
        elif self._phase is LinkPhase.CHECKSUM and matches:
            self._complete_handshake(status)

    def _complete_handshake(self, status: Status) -> None:
        hello = self._session_hello
        if hello is None:  # STATUS is only handled after a HELLO of this session
            raise _SessionEndError("internal error: handshake complete without a HELLO")
        self._enter_phase(LinkPhase.READY)
        self._handshakes += 1
        self._handshake_this_port = True
        self.last_error = None
        self._set_link(
            True,
            f"handshake complete: firmware {hello.fw_version}, boot_id {hello.boot_id:#010x}, "
            f"config checksum {status.config_checksum:#06x}, firmware state {status.state.name}",
        )

    def _restart_handshake(self, reason: str, now_ms: int) -> None:
        """A new boot or a lost HELLO: the link is down and the handshake starts again."""
        self._out.append(Note(WARNING, f"{reason} on {self._port}; handshaking again"))
        self._set_link(False, reason)
        self._sender.clear()
        self._pending_names.clear()
        self._start_handshake(now_ms)

    def _on_hello(self, hello: Hello, now_ms: int) -> None:
        new_boot = self._known_boot_id is not None and hello.boot_id != self._known_boot_id
        self._hello = hello
        self._session_hello = hello
        first_boot_seen = self._known_boot_id is None
        self._known_boot_id = hello.boot_id
        if hello.protocol_version != PROTOCOL_VERSION:
            self._on_mismatch(hello)
            return
        if new_boot:
            self._last_uptime_ms = None  # the new boot's uptime starts again from 0
            self._out.append(NewBoot(hello))
        if new_boot and self._phase is not LinkPhase.HELLO:
            self._restart_handshake(reboot_text(hello), now_ms)
            return
        if first_boot_seen or new_boot:
            self._out.append(Note(INFO, hello_text(hello)))
        if self._phase is LinkPhase.MISMATCH:
            # Same boot now speaks our version (cannot happen without a reboot, but be exact).
            self._start_handshake(now_ms)
            return
        if self._phase is LinkPhase.HELLO:
            self._hello_answered = True
            self._advance_handshake()

    def _on_mismatch(self, hello: Hello) -> None:
        """§8 step 3: another protocol version: nothing but STOP and ESTOP from now on."""
        error = mismatch_text(hello, self._port)
        if self._mismatch_error != error:
            self._out.append(Note(ERROR, error))
        self._mismatch_error = error
        self.last_error = error
        was_ready = self._phase is LinkPhase.READY
        self._enter_phase(LinkPhase.MISMATCH)
        self._sender.clear()
        self._pending_names.clear()
        if was_ready:
            self._set_link(False, error)

    def _on_ack(self, ack: Ack) -> None:
        name = self._pending_names.pop(ack.seq, None)
        if not self._sender.on_ack(ack.seq):
            self._out.append(Note(DEBUG, f"ACK for seq {ack.seq} that was not pending"))
            return
        if ack.seq == self._hello_seq and self._phase is LinkPhase.HELLO:
            self._hello_acked = True
            self._advance_handshake()
        elif ack.seq == self._configure_seq and self._phase is LinkPhase.CONFIGURE:
            self._enter_phase(LinkPhase.CHECKSUM)
        elif name is not None:
            self._out.append(Note(DEBUG, f"{name} (seq {ack.seq}) acknowledged"))

    def _on_nak(self, nak: Nak) -> None:
        self.naks += 1
        name = self._pending_names.pop(nak.seq, None)
        pending = self._sender.on_nak(nak.seq)
        label = name if name is not None else "SET_SPEED or unknown frame"
        text = f"firmware refused {label} (seq {nak.seq}): {nak.reason.name}"
        configure = pending and nak.seq == self._configure_seq
        if configure and self._phase is LinkPhase.CONFIGURE:
            if nak.reason in (NakReason.REFUSED_IN_STATE, NakReason.BELT_MOVING):
                self._out.append(
                    Note(WARNING, f"{text}: CONFIGURE again once the firmware is IDLE")
                )
                self._enter_phase(LinkPhase.WAIT_IDLE)
                return
            hello = self._session_hello
            raise _SessionEndError(configure_refused_text(text, self._limits, nak.reason, hello))
        if pending and nak.seq == self._hello_seq and self._phase is LinkPhase.HELLO:
            raise _SessionEndError(
                f"{text}: the firmware did not accept our HELLO (protocol "
                f"v{PROTOCOL_VERSION}); check the firmware version"
            )
        self.last_error = text
        self._out.append(Note(WARNING, text))

    def _on_status(self, frame: Frame, status: Status, now_ms: int) -> None:
        hello = self._session_hello
        if hello is None or self._phase is LinkPhase.MISMATCH:
            # No HELLO yet in this session (the boot it belongs to is unknown), or the
            # firmware speaks another protocol version (its STATUS cannot be trusted).
            return
        self._last_status_checksum = status.config_checksum
        previous_uptime, self._last_uptime_ms = self._last_uptime_ms, status.uptime_ms
        if (
            previous_uptime is not None
            and status.uptime_ms + UPTIME_BACKSTEP_MS < previous_uptime < UPTIME_WRAP_GUARD_MS
        ):
            # The firmware restarted and its HELLO was lost: this STATUS is from an unknown
            # boot. Drop it and handshake again; the new HELLO names the boot (§8 step 8).
            reason = (
                f"firmware restarted: STATUS uptime went back from {previous_uptime} to "
                f"{status.uptime_ms} ms and its HELLO was lost"
            )
            self._session_hello = None
            self._last_uptime_ms = None
            self._restart_handshake(reason, now_ms)
            return
        self._latest = StatusSnapshot(
            status=status,
            received_ms=now_ms,
            boot_id=hello.boot_id,
            config_checksum_expected=self._configure.config_checksum,
            seq=frame.seq,
        )
        self._handshake_on_status(status, now_ms)

    def _on_frame(self, frame: Frame, now_ms: int) -> None:
        if not self._open:
            return  # a frame decoded after the port closed belongs to no session
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
            self._on_ack(msg)
        elif isinstance(msg, Nak):
            self._on_nak(msg)
        elif isinstance(msg, FaultReport):
            self._out.append(
                Note(WARNING, f"firmware reports fault {msg.code.name} (detail {msg.detail})")
            )
        else:
            self._out.append(
                Note(
                    WARNING,
                    f"firmware sent {type(msg).__name__} (seq {frame.seq}), which only the "
                    "host sends; ignored",
                )
            )

    def _poll(self, now_ms: int) -> None:
        if not self._open:
            return
        for resent in self._sender.due(now_ms):
            self._out.append(Send(resent, reliable=True))
        failed = self._sender.failed(now_ms)
        if failed and self._hello_seq in failed and self._phase is LinkPhase.HELLO:
            raise _SessionEndError(
                f"no answer from the firmware to HELLO after {self._sender.max_retries} "
                "retransmissions: check that the firmware is running, the cable, and that "
                f"the baud rate ({self._baud}) matches"
            )
        if failed:
            names = ", ".join(
                f"{self._pending_names.pop(seq, 'frame')} (seq {seq})" for seq in failed
            )
            raise _SessionEndError(
                f"no ACK from the firmware for {names} after "
                f"{self._sender.max_retries} retransmissions"
            )
        silent_ms = now_ms - self._last_rx_ms
        if silent_ms > self._link_timeout_ms:
            raise _SessionEndError(
                f"no valid frame from the firmware for {silent_ms} ms "
                f"(link timeout {self._link_timeout_ms} ms)"
            )
        if self._phase in TIMED_PHASES and now_ms > self._handshake_deadline_ms:
            raise _SessionEndError(
                handshake_timeout_text(
                    self._handshake_timeout_ms,
                    self._phase,
                    self._last_status_checksum,
                    self._configure.config_checksum,
                    self._baud,
                )
            )
