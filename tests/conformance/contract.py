"""Shared pieces of the conformance tests: the configuration, raw frames, STATUS windows."""

from __future__ import annotations

import time

from bench.firmware_runner import Rx, Session
from firmware_bridge.wire.crc import crc16
from firmware_bridge.wire.messages import Configure, EStop, FwState, Status

LEASE_MS = 300
DECEL_KMH_S = 3.6
ACCEL_KMH_S = 2.0
RUN_KMH = 2.0
# The belt follows the drive through a 150 ms time constant and the sensor needs a few
# pulses: allowance on top of lease + ramp before the belt reads rest (and the load of a
# shared 2-core CI machine).
LAG_ALLOWANCE_S = 1.0


def config_for(fw: Session) -> Configure:
    """The limits the tests configure: within every implementation's ceilings."""
    return Configure.with_checksum(
        min(8.0, fw.hello.max_speed_kmh),
        min(ACCEL_KMH_S, fw.hello.max_accel_kmh_s),
        DECEL_KMH_S,
        LEASE_MS,
    )


def ready(fw: Session) -> Configure:
    config = config_for(fw)
    fw.ready(config)
    return config


def running(fw: Session, speed_kmh: float = RUN_KMH) -> Configure:
    """Handshake, CONFIGURE, and the belt measured at ``speed_kmh`` (SET_SPEED every tick)."""
    config = ready(fw)
    fw.run_at(speed_kmh, accel_kmh_s=config.max_accel_kmh_s, lease_ms=LEASE_MS)
    return config


def raw_frame(seq: int, msg_id: int, payload: bytes = b"") -> bytes:
    """A frame with a valid CRC whatever its id and payload (for malformed-frame tests)."""
    body = bytes((len(payload), seq, msg_id)) + payload
    crc = crc16(body)
    return bytes((0xA5,)) + body + bytes((crc & 0xFF, crc >> 8))


def statuses(fw: Session, *, count: int, timeout_s: float = 5.0) -> list[tuple[float, Status]]:
    """The next ``count`` STATUS frames with their arrival times."""
    after = fw.link.mark()
    found: list[tuple[float, Status]] = []

    def take(rx: Rx) -> bool:
        if isinstance(rx.message, Status):
            found.append((rx.t_s, rx.message))
        return len(found) >= count

    fw.link.wait_rx(take, after=after, timeout_s=timeout_s, what=f"{count} STATUS frames")
    return found


def estop_and_rest(fw: Session) -> None:
    fw.link.stop_renewing()
    fw.link.request(EStop())
    fw.belt_at_rest()
    fw.link.status(lambda s: s.measured_kmh <= 0.1, timeout_s=5.0, what="the sensor reading rest")


def elapsed_since(t0: float) -> float:
    return time.monotonic() - t0


__all__ = [
    "ACCEL_KMH_S",
    "DECEL_KMH_S",
    "LAG_ALLOWANCE_S",
    "LEASE_MS",
    "RUN_KMH",
    "FwState",
    "config_for",
    "elapsed_since",
    "estop_and_rest",
    "raw_frame",
    "ready",
    "running",
    "statuses",
]
