"""Test helpers for the simulated firmware and the serial bridge.

:class:`Host` is the host end of a :class:`SimFirmware` driven with explicit times (no I/O,
no clock): it encodes what a host would send, feeds it to the firmware and decodes what comes
back. :func:`running_bridge` runs a real :class:`FirmwareBridge` task for the length of an
``async with`` block, and :func:`renewing` plays the controller sending SET_SPEED every tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from firmware_bridge.port.bridge import FirmwareBridge, FirmwareLimits
from firmware_bridge.sim.firmware import SimConfig, SimFirmware
from firmware_bridge.sim.memory import MemorySimulator
from firmware_bridge.sim.physics import PhysicsParams
from firmware_bridge.wire.codec import Frame, FrameDecoder, encode_frame
from firmware_bridge.wire.link import SequenceCounter
from firmware_bridge.wire.messages import (
    Ack,
    Configure,
    FaultReport,
    FwFault,
    FwState,
    Hello,
    Message,
    Nak,
    SetSpeed,
    Status,
    host_hello,
)

#: The limits the tests configure (within the simulator's default ceilings 16 km/h, 2 km/h/s).
LIMITS = FirmwareLimits(
    max_speed_kmh=8.0, max_accel_kmh_s=2.0, max_decel_kmh_s=3.6, max_lease_ms=300
)
LEASE_MS = 300
TICK_MS = 20  # the controller's SET_SPEED period


def monotonic_ms() -> int:
    return time.monotonic_ns() // 1_000_000


def quiet_physics(**overrides: Any) -> PhysicsParams:
    """Physics without walker load and noise, for exact expectations."""
    values: dict[str, Any] = {"walker_on_belt": False, "noise_kmh": 0.0, "pulse_jitter_ms": 0.0}
    values.update(overrides)
    return PhysicsParams(**values)


def configure_msg(limits: FirmwareLimits = LIMITS) -> Configure:
    return Configure.with_checksum(
        limits.max_speed_kmh, limits.max_accel_kmh_s, limits.max_decel_kmh_s, limits.max_lease_ms
    )


class Host:
    """The host end of a :class:`SimFirmware`, with time driven explicitly (ms)."""

    def __init__(self, config: SimConfig | None = None, *, seed: int = 1, now_ms: int = 0) -> None:
        rng = random.Random(seed)  # noqa: S311 - a reproducible simulation, not cryptography
        self.fw = SimFirmware(config if config is not None else SimConfig(), rng, now_ms=now_ms)
        self.now_ms = now_ms
        self.seq = SequenceCounter()
        self.decoder = FrameDecoder()
        self.received: list[tuple[int, Frame]] = []

    # -- sending

    def send(self, msg: Message, *, seq: int | None = None) -> list[Message]:
        """Send ``msg`` now; return the messages the firmware answered with at once."""
        frame_seq = self.seq.next() if seq is None else seq
        return self.send_raw(encode_frame(frame_seq, msg))

    def send_raw(self, data: bytes) -> list[Message]:
        return self._collect(self.fw.receive(data, self.now_ms))

    def _collect(self, data: bytes) -> list[Message]:
        frames = self.decoder.feed(data)
        self.received.extend((self.now_ms, f) for f in frames)
        return [f.message for f in frames]

    # -- time

    def advance(
        self,
        to_ms: int,
        *,
        step_ms: int = 5,
        renew: SetSpeed | None = None,
        every: Callable[[Host], None] | None = None,
    ) -> list[Message]:
        """Tick the firmware up to ``to_ms``; with ``renew``, send it every TICK_MS."""
        out: list[Message] = []
        next_renew = self.now_ms
        while self.now_ms < to_ms:
            self.now_ms = min(to_ms, self.now_ms + step_ms)
            if renew is not None and self.now_ms >= next_renew:
                out.extend(self.send(renew))
                next_renew += TICK_MS
            out.extend(self._collect(self.fw.tick(self.now_ms)))
            if every is not None:
                every(self)
        return out

    def advance_by(self, ms: int, **kwargs: Any) -> list[Message]:
        return self.advance(self.now_ms + ms, **kwargs)

    # -- protocol steps

    def boot(self) -> Hello:
        """Run past the self-test; return the unsolicited HELLO."""
        out = self.advance(self.now_ms + self.fw.config.self_test_ms + 10)
        hellos = [m for m in out if isinstance(m, Hello)]
        assert len(hellos) == 1, out
        return hellos[0]

    def handshake(self, limits: FirmwareLimits = LIMITS) -> None:
        """HELLO and CONFIGURE, both ACKed (boots first when still in BOOT)."""
        if self.fw.state is FwState.BOOT:
            self.boot()
        answers = self.send(host_hello())
        assert isinstance(answers[0], Ack), answers
        assert isinstance(answers[1], Hello), answers
        answers = self.send(configure_msg(limits))
        assert len(answers) == 1, answers
        assert isinstance(answers[0], Ack), answers

    def run_at(self, speed_kmh: float, accel_kmh_s: float = 2.0, *, for_ms: int) -> list[Message]:
        """Renew SET_SPEED every tick for ``for_ms``."""
        return self.advance_by(
            for_ms, renew=SetSpeed(speed_kmh=speed_kmh, accel_kmh_s=accel_kmh_s, lease_ms=LEASE_MS)
        )

    # -- what came back

    def state(self) -> FwState:
        """The firmware's state now (a call, so that mypy does not narrow it between steps)."""
        return self.fw.state

    def fault(self) -> FwFault:
        return self.fw.fault

    def statuses(self, since_ms: int = 0) -> list[Status]:
        return [
            f.message for t, f in self.received if t >= since_ms and isinstance(f.message, Status)
        ]

    def last_status(self) -> Status:
        statuses = self.statuses()
        assert statuses, "no STATUS received yet"
        return statuses[-1]

    def faults(self) -> list[FaultReport]:
        return [f.message for _, f in self.received if isinstance(f.message, FaultReport)]

    def naks(self) -> list[Nak]:
        return [f.message for _, f in self.received if isinstance(f.message, Nak)]


def memory_bridge(
    sim: MemorySimulator, clock_ms: Callable[[], int], **kwargs: Any
) -> FirmwareBridge:
    """A :class:`FirmwareBridge` on ``sim``'s in-memory cable (not started)."""
    return FirmwareBridge(
        sim.port,
        baud=115200,
        limits=LIMITS,
        clock_ms=clock_ms,
        open_port=sim.open_connection,
        **kwargs,
    )


@contextlib.asynccontextmanager
async def running_bridge(
    port: str, *, limits: FirmwareLimits = LIMITS, **kwargs: Any
) -> AsyncIterator[FirmwareBridge]:
    """A :class:`FirmwareBridge` whose ``run()`` task lives for the ``async with`` block.

    On exit the task is cancelled; any other way it ended (a bug) fails the test.
    """
    kwargs.setdefault("reconnect_min_s", 0.05)
    kwargs.setdefault("reconnect_max_s", 0.4)
    bridge = FirmwareBridge(port, baud=115200, limits=limits, clock_ms=monotonic_ms, **kwargs)
    task = asyncio.create_task(bridge.run(), name="firmware-bridge")
    try:
        yield bridge
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert task.cancelled(), "bridge.run() ended on its own"


@contextlib.asynccontextmanager
async def renewing(
    bridge: FirmwareBridge, speed_kmh: float, accel_kmh_s: float = 2.0, lease_ms: int = LEASE_MS
) -> AsyncIterator[list[bool]]:
    """Play the controller: SET_SPEED every TICK_MS while the block runs.

    Yields the list of ``set_speed`` return values (True: sent, False: link down).
    """
    results: list[bool] = []

    async def loop() -> None:
        while True:
            results.append(bridge.set_speed(speed_kmh, accel_kmh_s, lease_ms))
            await asyncio.sleep(TICK_MS / 1000)

    task = asyncio.create_task(loop(), name="test-controller-renew")
    try:
        yield results
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
