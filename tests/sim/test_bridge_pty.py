"""The serial bridge against the simulated firmware over a real pseudo-terminal.

Real time, real pty, real pyserial-asyncio-fast; every wait is on a condition with a timeout
(tests.waiting.wait_until). Rule ids refer to docs/firmware-safety.md (FW-n) and to the link
rules of docs/protocol.md §7-8.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import tty
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import serial

from firmware_bridge.port.bridge import FirmwareBridge
from firmware_bridge.sim.firmware import HostFrame, SimConfig, SimFault
from firmware_bridge.sim.pty import PtySimulator
from firmware_bridge.wire.codec import FrameDecoder, encode_frame
from firmware_bridge.wire.messages import Configure, EStop, FwFault, FwState, Hello, SetSpeed, Stop
from tests.sim.helpers import LIMITS, configure_msg, monotonic_ms, renewing, running_bridge
from tests.waiting import wait_until

pytestmark = pytest.mark.timeout(30)

READY_TIMEOUT_S = 3.0


@contextlib.asynccontextmanager
async def linked(
    tmp_path: Path, config: SimConfig | None = None, *, seed: int = 1, **bridge_kwargs: object
) -> AsyncIterator[tuple[PtySimulator, FirmwareBridge]]:
    """A simulator on a pty behind a stable link, and a bridge that has completed its handshake."""
    async with (
        PtySimulator(config, seed=seed, link_path=tmp_path / "firmware.tty") as sim,
        running_bridge(sim.port, **bridge_kwargs) as bridge,  # type: ignore[arg-type] # test-only passthrough
    ):
        await asyncio.wait_for(bridge.ready.wait(), READY_TIMEOUT_S)
        yield sim, bridge


async def statuses_pass(bridge: FirmwareBridge, count: int, timeout_s: float = 5.0) -> None:
    """Wait until ``count`` more STATUS frames have arrived (time measured by the firmware)."""
    snap = bridge.latest()
    start = snap.status.uptime_ms if snap is not None else 0
    await wait_until(
        lambda: (s := bridge.latest()) is not None and s.status.uptime_ms >= start + count * 20,
        timeout_s=timeout_s,
        what=f"{count} more STATUS frames",
    )


def received_so_far(sim: PtySimulator) -> HostFrame | None:
    """A mark for :func:`host_messages_after`: the last frame the firmware has received."""
    frames = sim.firmware.host_frames
    return frames[-1] if frames else None


def host_messages_after(sim: PtySimulator, mark: HostFrame | None) -> list[type]:
    """The messages the firmware received after ``mark`` (:func:`received_so_far`), in order.

    By order of receipt, not by the receipt time the simulator logs: after a stall of its own
    (the test process descheduled for two of its ticks) the simulator credits waiting bytes to
    when it last looked (``PtySimulator._arrival_ms``), which can be before the moment the test
    read its clock and sent them.
    """
    frames = sim.firmware.host_frames
    start = next((i + 1 for i, frame in enumerate(frames) if frame is mark), 0)
    return [type(f.frame.message) for f in frames[start:]]


# --------------------------------------------------------------------------- handshake


async def test_handshake_configures_the_firmware_and_reports_status(tmp_path: Path) -> None:
    changes: list[tuple[bool, str]] = []
    async with linked(tmp_path, on_link_change=lambda up, why: changes.append((up, why))) as (
        sim,
        bridge,
    ):
        assert bridge.connected
        assert bridge.hello is not None
        assert bridge.hello.boot_id == sim.firmware.boot_id
        assert bridge.hello.fw_version == "1.0.0"
        assert sim.firmware.configuration == configure_msg()
        assert bridge.expected_config_checksum == configure_msg().config_checksum
        snap = bridge.latest()
        assert snap is not None
        assert snap.status.config_checksum == snap.config_checksum_expected
        assert snap.boot_id == sim.firmware.boot_id
        assert monotonic_ms() - snap.received_ms < 200
        assert changes[0][0] is True
        assert "handshake complete" in changes[0][1]
        stats = bridge.stats
        assert stats.connected
        assert stats.handshakes == 1
        assert stats.frames_rx > 0
        assert stats.crc_errors == 0
        assert stats.last_error is None
        # The handshake sent HELLO and CONFIGURE and nothing that moves the belt.
        sent = host_messages_after(sim, None)
        assert Hello in sent
        assert Configure in sent
        assert SetSpeed not in sent
    assert changes[-1][0] is False  # the link went down once when the bridge stopped


async def test_set_speed_is_refused_before_the_handshake(tmp_path: Path) -> None:
    async with PtySimulator(seed=1, link_path=tmp_path / "fw") as sim:
        bridge = FirmwareBridge(sim.port, baud=115200, limits=LIMITS, clock_ms=monotonic_ms)
        assert not bridge.set_speed(2.0, 1.0, 300)
        assert not bridge.stop(3.6)  # no port open: nothing can be sent
        assert not bridge.clear_fault()
        assert bridge.stats.motion_dropped_link_down == 2
        assert bridge.latest() is None


# --------------------------------------------------------------------------- motion


async def test_belt_follows_set_speed_within_the_ramp(tmp_path: Path) -> None:
    async with linked(tmp_path) as (sim, bridge):
        started = monotonic_ms()
        peak: list[float] = []
        async with renewing(bridge, 3.0, accel_kmh_s=2.0) as sent:
            await wait_until(
                lambda: (s := bridge.latest()) is not None and s.status.measured_kmh >= 2.9,
                timeout_s=4.0,
                what="the measured speed to reach 2.9 km/h",
            )
            reached_ms = monotonic_ms() - started
            peak.append(sim.firmware.true_speed_kmh)
            snap = bridge.latest()
            assert snap is not None
            assert snap.status.state is FwState.RUNNING
            assert snap.status.commanded_kmh == pytest.approx(3.0)
            assert snap.status.last_applied_seq is not None
            assert all(sent)
        # 3 km/h at 2 km/h/s: 1.5 s, plus belt lag and one sensor period.
        assert 1400 <= reached_ms <= 1500 + 1200
        assert max(peak) <= 3.0 + 0.05


async def test_lease_expiry_stops_the_belt_when_the_host_goes_silent(tmp_path: Path) -> None:
    """FW-3 over the wire: the controller stops renewing; the firmware stops the belt."""
    async with linked(tmp_path) as (sim, bridge):
        async with renewing(bridge, 2.0, accel_kmh_s=2.0, lease_ms=300):
            await wait_until(
                lambda: sim.firmware.true_speed_kmh >= 1.95, timeout_s=4.0, what="2 km/h"
            )
        silent_from = monotonic_ms()
        await wait_until(
            lambda: sim.firmware.fault is FwFault.LEASE_EXPIRED,
            timeout_s=1.0,
            what="LEASE_EXPIRED",
        )
        await wait_until(
            lambda: sim.firmware.true_speed_kmh == 0.0, timeout_s=3.0, what="the belt at rest"
        )
        # lease 300 ms + 2 km/h at max_decel 3.6 km/h/s (0.56 s) + lag, and scheduling slack.
        assert monotonic_ms() - silent_from <= 300 + 556 + 700
        await wait_until(
            lambda: (s := bridge.latest()) is not None and s.status.fault is FwFault.LEASE_EXPIRED,
            timeout_s=1.0,
            what="the bridge to see LEASE_EXPIRED",
        )
        assert bridge.connected  # the link itself is fine


async def test_speed_above_the_ceiling_is_a_firmware_fault_not_a_clamp(tmp_path: Path) -> None:
    """FW-4 over the wire: the firmware latches a fault; the belt never moves."""
    async with linked(tmp_path) as (sim, bridge):
        assert bridge.set_speed(9.0, 1.0, 300)  # valid on the wire, above the configured 8
        await wait_until(
            lambda: sim.firmware.fault is FwFault.SPEED_ABOVE_CEILING,
            timeout_s=1.0,
            what="SPEED_ABOVE_CEILING",
        )
        await wait_until(lambda: bridge.stats.naks >= 1, timeout_s=1.0, what="the NAK")
        await statuses_pass(bridge, 25)
        assert sim.firmware.true_speed_kmh == 0.0
        snap = bridge.latest()
        assert snap is not None
        assert snap.status.state is FwState.FAULT
        # FW-6: motion is refused while faulted, although the link is up.
        naks = bridge.stats.naks
        assert bridge.set_speed(1.0, 1.0, 300)
        await wait_until(lambda: bridge.stats.naks > naks, timeout_s=1.0, what="another NAK")
        assert sim.firmware.true_speed_kmh == 0.0


@pytest.mark.parametrize(
    ("kind", "state"),
    [
        ("stop", FwState.RUNNING),
        ("stop", FwState.STOPPING),
        ("stop", FwState.FAULT),
        ("estop", FwState.IDLE),
        ("estop", FwState.RUNNING),
    ],
    ids=lambda v: str(getattr(v, "name", v)),
)
async def test_stop_and_estop_are_acked_in_every_state(
    tmp_path: Path, state: FwState, kind: str
) -> None:
    """FW-5 over the wire: acknowledged (no retransmission, link stays up), belt at rest.

    Every state and both kinds are covered without a wire in test_firmware.py.
    """
    async with linked(tmp_path) as (sim, bridge):
        if state is not FwState.IDLE:
            async with renewing(bridge, 2.0):
                await wait_until(
                    lambda: sim.firmware.true_speed_kmh > 1.0, timeout_s=3.0, what="motion"
                )
                if state is FwState.STOPPING:
                    assert bridge.stop(0.5)
                    await wait_until(
                        lambda: sim.firmware.state is FwState.STOPPING,
                        timeout_s=1.0,
                        what="STOPPING",
                    )
            if state is FwState.FAULT:
                await wait_until(
                    lambda: sim.firmware.state is FwState.FAULT, timeout_s=1.0, what="FAULT"
                )
        assert sim.firmware.state is state
        before_stop = received_so_far(sim)
        retransmits = bridge.stats.retransmits
        assert bridge.stop(3.6) if kind == "stop" else bridge.estop()
        wanted = Stop if kind == "stop" else EStop
        await wait_until(
            lambda: wanted in host_messages_after(sim, before_stop), timeout_s=1.0, what="the stop"
        )
        await wait_until(
            lambda: sim.firmware.true_speed_kmh == 0.0, timeout_s=3.0, what="the belt at rest"
        )
        await statuses_pass(bridge, 25)  # > 400 ms: an unanswered stop would have failed
        assert bridge.connected
        assert bridge.stats.retransmits == retransmits
        if kind == "estop" and state is not FwState.FAULT:
            assert sim.firmware.fault is FwFault.ESTOP


async def test_clear_fault_at_rest_never_restarts_the_belt(tmp_path: Path) -> None:
    """FW-7 over the wire."""
    async with linked(tmp_path) as (sim, bridge):
        async with renewing(bridge, 2.0):
            await wait_until(
                lambda: (s := bridge.latest()) is not None and s.status.measured_kmh > 1.5,
                timeout_s=4.0,
                what="1.5 km/h measured",
            )
        assert bridge.estop()
        await wait_until(
            lambda: (s := bridge.latest()) is not None and s.status.measured_kmh == 0.0,
            timeout_s=4.0,
            what="the sensor to read 0",
        )
        assert sim.firmware.true_speed_kmh == 0.0
        assert bridge.clear_fault()
        await wait_until(
            lambda: sim.firmware.state is FwState.IDLE, timeout_s=1.0, what="IDLE after clear"
        )
        peak = 0.0
        for _ in range(25):  # half a second of STATUS frames
            await statuses_pass(bridge, 1)
            peak = max(peak, sim.firmware.true_speed_kmh)
        assert peak == 0.0
        assert not sim.firmware.motor_powered


# --------------------------------------------------------------------------- injected faults


async def test_corrupt_bytes_show_as_crc_errors_and_the_link_survives(tmp_path: Path) -> None:
    async with linked(tmp_path) as (sim, bridge):
        await sim.inject(SimFault.CORRUPT_BYTES, pct=2.0)
        await wait_until(lambda: bridge.stats.crc_errors >= 5, timeout_s=5.0, what="CRC errors")
        stats = bridge.stats
        assert stats.bytes_skipped > 0
        assert stats.resyncs > 0
        assert stats.connected
        await sim.clear(SimFault.CORRUPT_BYTES)


async def test_dropped_frames_show_as_sequence_gaps(tmp_path: Path) -> None:
    async with linked(tmp_path) as (sim, bridge):
        await sim.inject(SimFault.DROP_FRAMES, pct=20.0)
        await wait_until(lambda: bridge.stats.rx_seq_gaps >= 3, timeout_s=5.0, what="gaps")
        assert bridge.connected


async def test_total_silence_takes_the_link_down_and_it_comes_back(tmp_path: Path) -> None:
    """protocol.md §7: no valid frame for 500 ms is link down; then reconnect and handshake."""
    changes: list[tuple[bool, str]] = []
    async with linked(tmp_path, on_link_change=lambda up, why: changes.append((up, why))) as (
        sim,
        bridge,
    ):
        await sim.inject(SimFault.DROP_FRAMES, pct=100.0)
        await wait_until(lambda: not bridge.connected, timeout_s=2.0, what="link down")
        assert "no valid frame" in changes[-1][1] or "no ACK" in changes[-1][1]
        assert not bridge.set_speed(1.0, 1.0, 300)
        await sim.clear(SimFault.DROP_FRAMES)
        await wait_until(lambda: bridge.connected, timeout_s=4.0, what="link up again")
        assert bridge.stats.handshakes == 2
        assert [up for up, _ in changes] == [True, False, True]


async def test_reboot_is_reported_with_the_new_boot_id_and_the_belt_stays_still(
    tmp_path: Path,
) -> None:
    """FW-1 over the wire: on_hello gets the new boot; the bridge re-handshakes only."""
    hellos: list[Hello] = []
    async with linked(tmp_path, on_hello=hellos.append) as (sim, bridge):
        old_boot = sim.firmware.boot_id
        async with renewing(bridge, 2.0):
            await wait_until(lambda: sim.firmware.true_speed_kmh > 1.5, timeout_s=3.0, what="2")
        await statuses_pass(bridge, 2)  # the last SET_SPEED has reached the firmware
        before_reboot = received_so_far(sim)
        await sim.inject(SimFault.REBOOT)
        await wait_until(lambda: bool(hellos), timeout_s=2.0, what="on_hello")
        assert hellos[0].boot_id == sim.firmware.boot_id != old_boot
        await wait_until(
            lambda: bridge.stats.handshakes == 2 and bridge.connected,
            timeout_s=3.0,
            what="the second handshake",
        )
        snap = bridge.latest()
        assert snap is not None
        assert snap.boot_id == sim.firmware.boot_id
        await wait_until(
            lambda: sim.firmware.true_speed_kmh == 0.0, timeout_s=3.0, what="belt coasted"
        )
        await statuses_pass(bridge, 25)
        assert sim.firmware.true_speed_kmh == 0.0
        assert SetSpeed not in host_messages_after(sim, before_reboot)


async def test_reboot_whose_hello_is_lost_is_found_from_the_uptime(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    changes: list[tuple[bool, str]] = []
    hellos: list[Hello] = []
    async with linked(
        tmp_path, on_link_change=lambda up, why: changes.append((up, why)), on_hello=hellos.append
    ) as (sim, bridge):
        await statuses_pass(bridge, 60)  # uptime well above the 1 s back-step threshold
        write = sim._write  # the one place the simulator's bytes go out
        decoder = FrameDecoder()
        dropped: list[Hello] = []

        def lose_first_hello(data: bytes) -> None:
            out = bytearray()
            for frame in decoder.feed(data):
                if isinstance(frame.message, Hello) and not dropped:
                    dropped.append(frame.message)
                    continue
                out += encode_frame(frame.seq, frame.message)
            write(bytes(out))

        monkeypatch.setattr(sim, "_write", lose_first_hello)
        await sim.inject(SimFault.REBOOT)
        await wait_until(lambda: bool(hellos), timeout_s=2.0, what="the new boot's HELLO")
        assert dropped
        assert dropped[0].boot_id == hellos[0].boot_id == sim.firmware.boot_id
        await wait_until(lambda: bridge.connected, timeout_s=2.0, what="link up again")
        assert "uptime went back" in changes[1][1]
        assert bridge.stats.handshakes == 2
        snap = bridge.latest()
        assert snap is not None
        assert snap.boot_id == sim.firmware.boot_id


async def test_frozen_sensor_is_seen_in_status(tmp_path: Path) -> None:
    config = SimConfig(self_checks=False)
    async with linked(tmp_path, config) as (sim, bridge):
        async with renewing(bridge, 2.0):
            await wait_until(
                lambda: (s := bridge.latest()) is not None and s.status.measured_kmh > 1.8,
                timeout_s=4.0,
                what="2 km/h measured",
            )
            await sim.inject(SimFault.SENSOR_FREEZE)
            frozen = sim.firmware.measured_kmh
        async with renewing(bridge, 3.0):
            await wait_until(
                lambda: sim.firmware.true_speed_kmh > 2.9, timeout_s=3.0, what="3 km/h true"
            )
            await statuses_pass(bridge, 5)
            snap = bridge.latest()
            assert snap is not None
            assert snap.status.measured_kmh == pytest.approx(frozen, abs=0.006)
            assert snap.status.commanded_kmh == pytest.approx(3.0)
        assert bridge.stop(3.6)


async def test_runaway_is_seen_and_estop_stops_it(tmp_path: Path) -> None:
    config = SimConfig(self_checks=False)  # the controller's own overspeed check is what acts
    async with linked(tmp_path, config) as (sim, bridge):
        async with renewing(bridge, 2.0):
            await wait_until(lambda: sim.firmware.true_speed_kmh > 1.9, timeout_s=3.0, what="2")
            await sim.inject(SimFault.RUNAWAY, accel_kmh_s=2.0)
            await wait_until(
                lambda: (s := bridge.latest()) is not None and s.status.measured_kmh > 3.0,
                timeout_s=3.0,
                what="the runaway in STATUS",
            )
            snap = bridge.latest()
            assert snap is not None
            assert snap.status.commanded_kmh == pytest.approx(2.0)
            assert bridge.estop()
        await wait_until(
            lambda: sim.firmware.true_speed_kmh == 0.0, timeout_s=2.0, what="the belt at rest"
        )
        assert sim.firmware.fault is FwFault.ESTOP


async def test_firmware_self_check_catches_a_runaway(tmp_path: Path) -> None:
    """FW-12 over the wire, with the default firmware."""
    async with linked(tmp_path) as (sim, bridge):
        async with renewing(bridge, 2.0):
            await wait_until(lambda: sim.firmware.true_speed_kmh > 1.9, timeout_s=3.0, what="2")
            await sim.inject(SimFault.RUNAWAY, accel_kmh_s=2.0)
            await wait_until(
                lambda: (s := bridge.latest()) is not None and s.status.fault is FwFault.OVERSPEED,
                timeout_s=4.0,
                what="OVERSPEED in STATUS",
            )
        await wait_until(
            lambda: sim.firmware.true_speed_kmh == 0.0, timeout_s=2.0, what="the belt at rest"
        )


async def test_stuck_board_is_seen_and_estop_stops_it(tmp_path: Path) -> None:
    config = SimConfig(self_checks=False)
    async with linked(tmp_path, config) as (sim, bridge):
        async with renewing(bridge, 2.5):
            await wait_until(lambda: sim.firmware.true_speed_kmh > 2.4, timeout_s=3.0, what="2.5")
            await sim.inject(SimFault.STUCK_SPEED)
        async with renewing(bridge, 1.0):
            await wait_until(
                lambda: (s := bridge.latest()) is not None and s.status.commanded_kmh == 1.0,
                timeout_s=2.0,
                what="commanded 1 km/h",
            )
            await statuses_pass(bridge, 15)
            snap = bridge.latest()
            assert snap is not None
            assert snap.status.measured_kmh > 2.2  # the belt did not follow
            assert bridge.estop()
        await wait_until(
            lambda: sim.firmware.true_speed_kmh == 0.0, timeout_s=2.0, what="the belt at rest"
        )


async def test_lease_ignoring_firmware_keeps_running_but_obeys_stop(tmp_path: Path) -> None:
    async with linked(tmp_path) as (sim, bridge):
        async with renewing(bridge, 2.0):
            await wait_until(lambda: sim.firmware.true_speed_kmh > 1.9, timeout_s=3.0, what="2")
        await sim.inject(SimFault.LEASE_IGNORED)
        await statuses_pass(bridge, 40)  # 0.8 s without any SET_SPEED (lease 300 ms)
        snap = bridge.latest()
        assert snap is not None
        assert snap.status.state is FwState.RUNNING
        assert snap.status.measured_kmh > 1.8
        assert bridge.stop(3.6)
        await wait_until(
            lambda: sim.firmware.true_speed_kmh == 0.0, timeout_s=2.0, what="rest after STOP"
        )
        assert sim.firmware.state in (FwState.STOPPING, FwState.IDLE)
        assert sim.firmware.fault is FwFault.NONE


# --------------------------------------------------------------------------- unplug


async def test_unplug_and_replug_reconnects_without_moving_the_belt(tmp_path: Path) -> None:
    changes: list[tuple[bool, str]] = []
    async with linked(tmp_path, on_link_change=lambda up, why: changes.append((up, why))) as (
        sim,
        bridge,
    ):
        async with renewing(bridge, 2.0) as sent:
            await wait_until(lambda: sim.firmware.true_speed_kmh > 1.9, timeout_s=3.0, what="2")
            await sim.disconnect()
            await wait_until(lambda: not bridge.connected, timeout_s=1.0, what="link down")
            assert "unplugged" in changes[-1][1] or "closed" in changes[-1][1]
            await wait_until(lambda: not sent[-1], timeout_s=1.0, what="set_speed refused")
            dropped = bridge.stats.motion_dropped_link_down
            assert dropped >= 1
            # The firmware, on its own, stops the belt when the lease runs out (FW-3).
            await wait_until(
                lambda: sim.firmware.fault is FwFault.LEASE_EXPIRED,
                timeout_s=1.0,
                what="LEASE_EXPIRED while unplugged",
            )
        await wait_until(
            lambda: sim.firmware.true_speed_kmh == 0.0, timeout_s=3.0, what="the belt at rest"
        )
        before_replug = received_so_far(sim)
        await sim.reconnect()
        await wait_until(lambda: bridge.connected, timeout_s=3.0, what="link up again")
        stats = bridge.stats
        assert stats.handshakes == 2
        assert stats.reconnects >= 1
        assert [up for up, _ in changes] == [True, False, True]
        # Reconnecting only handshakes (and a faulted firmware keeps our configuration).
        await statuses_pass(bridge, 25)
        assert SetSpeed not in host_messages_after(sim, before_replug)
        assert sim.firmware.true_speed_kmh == 0.0
        snap = bridge.latest()
        assert snap is not None
        assert snap.status.state is FwState.FAULT
        assert snap.status.config_checksum == snap.config_checksum_expected


async def test_rebooted_while_unplugged_configures_again(tmp_path: Path) -> None:
    hellos: list[Hello] = []
    async with linked(tmp_path, on_hello=hellos.append) as (sim, bridge):
        await sim.disconnect()
        await wait_until(lambda: not bridge.connected, timeout_s=1.0, what="link down")
        await sim.inject(SimFault.REBOOT)
        await sim.reconnect()
        await wait_until(lambda: bridge.connected, timeout_s=3.0, what="link up again")
        assert hellos
        assert hellos[-1].boot_id == sim.firmware.boot_id
        assert sim.firmware.configuration == configure_msg()


# --------------------------------------------------------------------------- refusals


async def test_protocol_mismatch_keeps_the_link_not_ready(tmp_path: Path) -> None:
    config = SimConfig(protocol_version=2)
    async with (
        PtySimulator(config, seed=1, link_path=tmp_path / "fw") as sim,
        running_bridge(sim.port) as bridge,
    ):
        await wait_until(
            lambda: (
                bridge.stats.last_error is not None
                and "firmware speaks protocol v2, controller needs v1: update the firmware"
                in bridge.stats.last_error
            ),
            timeout_s=3.0,
            what="the version mismatch error",
        )
        assert not bridge.ready.is_set()
        assert not bridge.connected
        assert not bridge.set_speed(1.0, 1.0, 300)
        assert not bridge.clear_fault()
        before_stop = received_so_far(sim)
        assert bridge.stop(3.6)  # stops still go out
        await wait_until(
            lambda: Stop in host_messages_after(sim, before_stop), timeout_s=1.0, what="the STOP"
        )
        sent = host_messages_after(sim, None)
        assert Configure not in sent
        assert SetSpeed not in sent


async def test_configure_above_the_firmware_ceilings_is_reported(tmp_path: Path) -> None:
    limits = dataclasses.replace(LIMITS, max_speed_kmh=20.0)  # the firmware's ceiling is 16
    async with (
        PtySimulator(seed=1, link_path=tmp_path / "fw") as sim,
        running_bridge(sim.port, limits=limits) as bridge,
    ):
        await wait_until(
            lambda: (
                bridge.stats.last_error is not None and "ABOVE_CEILING" in bridge.stats.last_error
            ),
            timeout_s=3.0,
            what="the refused CONFIGURE",
        )
        error = bridge.stats.last_error
        assert error is not None
        assert "20.0 km/h" in error
        assert "16.0 km/h" in error
        assert not bridge.connected
        assert sim.firmware.configuration is None


async def test_port_is_opened_exclusively(tmp_path: Path) -> None:
    async with linked(tmp_path) as (sim, bridge), running_bridge(sim.port) as second:
        await wait_until(
            lambda: second.stats.last_error is not None, timeout_s=2.0, what="the second open"
        )
        assert "lock" in (second.stats.last_error or "")
        assert not second.connected
        assert bridge.connected


async def test_silent_port_never_comes_up(tmp_path: Path) -> None:
    master, slave = os.openpty()
    tty.setraw(slave)
    try:
        async with running_bridge(os.ttyname(slave)) as bridge:
            await wait_until(
                lambda: bridge.stats.last_error is not None, timeout_s=2.0, what="a timeout"
            )
            error = bridge.stats.last_error or ""
            assert "no answer from the firmware to HELLO" in error
            assert bridge.stats.retransmits >= 1  # HELLO was retried
            assert not bridge.ready.is_set()
    finally:
        os.close(master)
        os.close(slave)


def test_unplug_write_errors_of_its_own_transport_are_not_logged_as_errors(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An unplug makes the serial transport report "Fatal write error" to the loop; for the
    bridge's own transport that is an expected link loss: DEBUG, no ERROR, no traceback.
    Anything else still reaches the previous handler."""
    bridge = FirmwareBridge("/dev/null", baud=115200, limits=LIMITS, clock_ms=lambda: 0)
    seen: list[dict[str, object]] = []
    handler = bridge._exception_handler(lambda _loop, context: seen.append(context))

    class Transport:
        pass

    own, other = Transport(), Transport()
    bridge._transports.add(own)  # type: ignore[arg-type]  # a stand-in transport
    loop = asyncio.new_event_loop()
    try:
        with caplog.at_level(logging.DEBUG):
            error = serial.SerialException("write failed: [Errno 5] Input/output error")
            handler(
                loop,
                {
                    "message": "Fatal write error on serial transport",
                    "exception": error,
                    "transport": own,
                },
            )
            handler(
                loop,
                {
                    "message": "Fatal write error on serial transport",
                    "exception": error,
                    "transport": other,
                },
            )
            handler(
                loop, {"message": "something else", "exception": ValueError("x"), "transport": own}
            )
    finally:
        loop.close()
    assert [c["transport"] for c in seen] == [other, own]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("Fatal write error" in r.getMessage() for r in caplog.records)
