"""A firmware's side of the link, as frames, for driving :class:`LinkSession` on explicit times.

The driver plays the firmware (its HELLO, STATUS, ACK and NAK frames with their own sequence
numbers and a rising uptime) and records every action the session returns. Nothing here
does I/O or reads a clock: ``now_ms`` is the driver's, moved by the tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from firmware_bridge.wire.codec import Frame, FrameDecoder
from firmware_bridge.wire.link_phases import LinkPhase
from firmware_bridge.wire.messages import (
    PROTOCOL_VERSION,
    Ack,
    Configure,
    FaultReport,
    FwFault,
    FwState,
    Hello,
    Message,
    Nak,
    NakReason,
    ResetCause,
    Status,
)
from firmware_bridge.wire.session import LinkSession
from firmware_bridge.wire.session_actions import (
    Action,
    EndSession,
    FirmwareLimits,
    LinkReport,
    Send,
)

LIMITS = FirmwareLimits(
    max_speed_kmh=8.0, max_accel_kmh_s=0.5, max_decel_kmh_s=3.6, max_lease_ms=300
)
OUR_CHECKSUM = Configure.with_checksum(8.0, 0.5, 3.6, 300).config_checksum
OTHER_CHECKSUM = OUR_CHECKSUM ^ 0x5A5A
BOOT_A = 0x1111_2222
BOOT_B = 0x3333_4444
HANDSHAKE_TIMEOUT_MS = 1000
LINK_TIMEOUT_MS = 500


def hello(boot_id: int = BOOT_A, protocol_version: int = PROTOCOL_VERSION) -> Hello:
    return Hello(
        protocol_version=protocol_version,
        fw_version="1.2.3",
        reset_cause=ResetCause.POWER_ON,
        max_speed_kmh=12.0,
        max_accel_kmh_s=1.0,
        boot_id=boot_id,
        uptime_ms=50,
    )


def status(state: FwState, checksum: int, uptime_ms: int) -> Status:
    return Status(
        measured_kmh=0.0,
        commanded_kmh=0.0,
        state=state,
        fault=FwFault.LEASE_EXPIRED if state is FwState.FAULT else FwFault.NONE,
        safety_key_closed=True,
        uptime_ms=uptime_ms,
        last_applied_seq=None,
        config_checksum=checksum,
        lease_remaining_ms=0,
    )


def sent_messages(actions: list[Action]) -> list[tuple[int, Message]]:
    """(seq, message) of every frame the actions write."""
    out: list[tuple[int, Message]] = []
    for action in actions:
        if isinstance(action, Send):
            decoder = FrameDecoder()
            frames = list(decoder.feed(action.frame))
            assert len(frames) == 1, "one Send is exactly one frame"
            out.append((frames[0].seq, frames[0].message))
    return out


@dataclass
class Driver:
    """One session and the firmware at the other end; ``actions`` holds the last step's."""

    session: LinkSession = field(
        default_factory=lambda: LinkSession(
            LIMITS,
            port="/dev/ttyTEST",
            handshake_timeout_ms=HANDSHAKE_TIMEOUT_MS,
            link_timeout_ms=LINK_TIMEOUT_MS,
        )
    )
    now_ms: int = 1_000
    fw_seq: int = 0
    uptime_ms: int = 100_000
    actions: list[Action] = field(default_factory=list)
    log: list[Action] = field(default_factory=list)  # every action, in order
    hello_seq: int | None = None  # the host HELLO of this port session
    configure_seq: int | None = None  # the latest CONFIGURE sent

    # ---------------------------------------------------------------- inputs

    def _record(self, actions: list[Action]) -> list[Action]:
        self.actions = actions
        self.log.extend(actions)
        for seq, msg in sent_messages(actions):
            if isinstance(msg, Hello):
                self.hello_seq = seq
            elif isinstance(msg, Configure):
                self.configure_seq = seq
        return actions

    def advance(self, ms: int) -> None:
        self.now_ms += ms

    def open(self) -> list[Action]:
        self.hello_seq = None
        self.configure_seq = None
        return self._record(self.session.port_opened(self.now_ms))

    def close(self, reason: str = "port closed") -> list[Action]:
        _, actions = self.session.port_closed(reason)
        return self._record(actions)

    def frame(self, msg: Message) -> list[Action]:
        self.fw_seq = (self.fw_seq + 1) % 256
        return self._record(self.session.frame_received(Frame(self.fw_seq, msg), self.now_ms))

    def hello(
        self, boot_id: int = BOOT_A, protocol_version: int = PROTOCOL_VERSION
    ) -> list[Action]:
        self.fw_seq = 0  # a firmware HELLO starts its counter again
        self.uptime_ms = 100_000
        return self._record(
            self.session.frame_received(Frame(0, hello(boot_id, protocol_version)), self.now_ms)
        )

    def status(self, state: FwState, checksum: int, uptime_ms: int | None = None) -> list[Action]:
        self.uptime_ms += 20
        return self.frame(
            status(state, checksum, self.uptime_ms if uptime_ms is None else uptime_ms)
        )

    def ack(self, seq: int | None) -> list[Action]:
        return self.frame(Ack(seq=seq if seq is not None else 200))

    def nak(self, seq: int | None, reason: NakReason) -> list[Action]:
        return self.frame(Nak(seq=seq if seq is not None else 201, reason=reason))

    def fault_report(self) -> list[Action]:
        return self.frame(FaultReport(code=FwFault.LEASE_EXPIRED, detail=0))

    def poll(self) -> list[Action]:
        return self._record(self.session.poll(self.now_ms))

    # ---------------------------------------------------------------- whole steps

    def handshake(self, boot_id: int = BOOT_A, state: FwState = FwState.IDLE) -> None:
        """Open and complete a handshake with a firmware at ``state`` (CONFIGURE when IDLE)."""
        self.open()
        self.ack(self.hello_seq)
        self.hello(boot_id)
        self.status(state, OTHER_CHECKSUM if state is FwState.IDLE else OUR_CHECKSUM)
        if self.session.phase is LinkPhase.CONFIGURE:
            self.ack(self.configure_seq)
            self.status(FwState.IDLE, OUR_CHECKSUM)
        assert self.session.phase is LinkPhase.READY, self.session.phase

    def reach(self, phase: LinkPhase) -> None:
        """Bring the session to ``phase`` on a reconnect: a first session with boot A has
        completed and ended, so the boot is known and one session is counted."""
        self.handshake(BOOT_A)
        self.close("cable pulled")
        if phase is LinkPhase.CLOSED:
            return
        self.open()
        if phase is LinkPhase.HELLO:
            return
        if phase is LinkPhase.MISMATCH:
            self.hello(BOOT_A, PROTOCOL_VERSION + 1)
            return
        self.ack(self.hello_seq)
        self.hello(BOOT_A)
        if phase is LinkPhase.FIRST_STATUS:
            return
        if phase is LinkPhase.WAIT_IDLE:
            self.status(FwState.FAULT, OTHER_CHECKSUM)
            return
        self.status(FwState.IDLE, OTHER_CHECKSUM)
        if phase is LinkPhase.CONFIGURE:
            return
        self.ack(self.configure_seq)
        if phase is LinkPhase.CHECKSUM:
            return
        self.status(FwState.IDLE, OUR_CHECKSUM)
        assert phase is LinkPhase.READY

    # ---------------------------------------------------------------- what came out

    def ended(self) -> bool:
        return any(isinstance(a, EndSession) for a in self.actions)

    def reports(self) -> list[LinkReport]:
        return [a for a in self.actions if isinstance(a, LinkReport)]
