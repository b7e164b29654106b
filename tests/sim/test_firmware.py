"""The simulated firmware's contract (docs/firmware-safety.md), driven with explicit times.

Each test names the rule it checks. The belt physics is real (firmware_bridge.sim.physics),
so "the belt stops" means the simulated belt's true speed reaches 0.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
from typing import Any

import pytest

from firmware_bridge.sim.firmware import (
    InjectedFault,
    SimConfig,
    SimFault,
    SimFirmware,
)
from firmware_bridge.wire.codec import SYNC, FrameDecoder, encode_frame
from firmware_bridge.wire.crc import crc16
from firmware_bridge.wire.faults import CATEGORY_0_FAULTS
from firmware_bridge.wire.messages import (
    Ack,
    ClearFault,
    Configure,
    EStop,
    FaultReport,
    FwFault,
    FwState,
    GetStatus,
    Hello,
    MsgId,
    Nak,
    NakReason,
    ResetCause,
    SetSpeed,
    Status,
    Stop,
    host_hello,
)
from tests.sim.helpers import LEASE_MS, LIMITS, Host, configure_msg, quiet_physics

QUIET = SimConfig(physics=quiet_physics())


def running_host(speed_kmh: float = 4.0, config: SimConfig = QUIET) -> Host:
    """Handshaken, configured and running steadily at ``speed_kmh``."""
    host = Host(config)
    host.handshake()
    host.run_at(speed_kmh, for_ms=int(speed_kmh / 2.0 * 1000) + 2000)
    assert host.state() is FwState.RUNNING
    assert host.fw.true_speed_kmh == pytest.approx(speed_kmh, abs=0.05)
    return host


def raw_frame(seq: int, msg_id: int, payload: bytes) -> bytes:
    """A frame with a valid CRC around any payload (for malformed messages)."""
    body = bytes((len(payload), seq, msg_id)) + payload
    crc = crc16(body)
    return bytes((SYNC,)) + body + bytes((crc & 0xFF, crc >> 8))


def stop_in(host: Host, state: FwState) -> None:
    """Bring ``host.fw`` into ``state``."""
    if state is FwState.BOOT:
        return
    host.handshake()
    if state is FwState.IDLE:
        return
    host.run_at(4.0, for_ms=3000)
    if state is FwState.STOPPING:
        host.send(Stop(decel_kmh_s=1.0))
        host.advance_by(100)
    elif state is FwState.FAULT:
        host.advance_by(LEASE_MS + 100)  # lease expires while moving
    assert host.state() is state


# --------------------------------------------------------------------------- FW-1


def test_fw1_motor_disabled_at_boot_then_unsolicited_hello() -> None:
    host = Host(QUIET)
    assert host.state() is FwState.BOOT
    assert host.advance(40) == []  # self-test: silent
    assert not host.fw.motor_powered
    hello = host.boot()
    assert hello.protocol_version == 1
    assert hello.reset_cause is ResetCause.POWER_ON
    assert hello.boot_id == host.fw.boot_id != 0
    assert hello.max_speed_kmh == 16.0
    assert hello.max_accel_kmh_s == 2.0
    assert host.state() is FwState.IDLE
    assert not host.fw.motor_powered


def test_fw1_boot_answers_only_stops() -> None:
    host = Host(QUIET)
    host.advance(10)
    assert host.send(host_hello()) == []
    assert host.send(configure_msg()) == []
    assert host.send(SetSpeed(speed_kmh=2.0, accel_kmh_s=1.0, lease_ms=300)) == []
    answers = host.send(Stop(decel_kmh_s=2.0))
    assert answers == [Ack(seq=3)]
    assert host.send(EStop()) == [Ack(seq=4)]
    assert host.state() is FwState.BOOT
    host.boot()
    # A HELLO retransmitted after the self-test is answered.
    answers = host.send(host_hello(), seq=0)
    assert isinstance(answers[0], Ack)
    assert isinstance(answers[1], Hello)


def test_fw1_reboot_forgets_everything_and_never_resumes_motion() -> None:
    host = running_host(5.0)
    old_boot_id = host.fw.boot_id
    host.fw.inject(SimFault.REBOOT, now_ms=host.now_ms)
    assert host.state() is FwState.BOOT
    assert not host.fw.motor_powered
    hello = host.boot()
    assert hello.boot_id not in (0, old_boot_id)
    assert hello.reset_cause is ResetCause.WATCHDOG
    host.advance_by(1500)
    assert host.fw.true_speed_kmh == 0.0
    status = host.last_status()
    assert status.state is FwState.IDLE
    assert status.config_checksum == 0  # configuration forgotten
    assert status.last_applied_seq is None
    # The host's SET_SPEED no longer moves anything: the handshake is gone too.
    answers = host.send(SetSpeed(speed_kmh=5.0, accel_kmh_s=2.0, lease_ms=300))
    assert answers == [Nak(seq=answers[0].seq, reason=NakReason.NO_HANDSHAKE)]  # type: ignore[union-attr]


def test_fw1_boot_ids_differ_between_boots() -> None:
    host = Host(QUIET, seed=5)
    ids = {host.boot().boot_id}
    for _ in range(20):
        host.fw.inject(SimFault.REBOOT, now_ms=host.now_ms)
        ids.add(host.boot().boot_id)
    assert len(ids) == 21
    assert 0 not in ids
    assert host.fw.boots == 21


# --------------------------------------------------------------------------- FW-2


def test_fw2_fault_categories_match_the_contract() -> None:
    """The stop categories the simulator shuts down by (the wire data dictionary) are FW-2's."""
    assert {
        FwFault.ESTOP,
        FwFault.SAFETY_KEY_OPEN,
        FwFault.OVERSPEED,
        FwFault.SENSOR_FAULT,
        FwFault.MOTOR_FAULT,
        FwFault.INTERNAL,
    } == CATEGORY_0_FAULTS


def test_fw2_one_fault_message_and_the_first_code_stays_latched() -> None:
    host = running_host(4.0)
    host.advance_by(LEASE_MS + 50)  # LEASE_EXPIRED (category 1): ramping, power still on
    assert host.fault() is FwFault.LEASE_EXPIRED
    assert host.fw.motor_powered
    host.send(EStop())  # harder: power cut now, code unchanged
    assert not host.fw.motor_powered
    assert host.fault() is FwFault.LEASE_EXPIRED
    host.advance_by(1000)
    assert [f.code for f in host.faults()] == [FwFault.LEASE_EXPIRED]
    assert host.last_status().fault is FwFault.LEASE_EXPIRED


def test_fw2_category_1_ramps_then_removes_power() -> None:
    host = running_host(3.6)
    t0 = host.now_ms
    host.advance_by(LEASE_MS + 1)
    fault_at = host.now_ms
    assert host.state() is FwState.FAULT
    samples: list[tuple[int, float, bool]] = []
    host.advance_by(
        2000, every=lambda h: samples.append((h.now_ms, h.fw.commanded_kmh, h.fw.motor_powered))
    )
    # Ramp at max_decel 3.6 km/h/s: 3.6 km/h takes 1 s; power stays on until the ramp ends.
    ramp_end = next(t for t, v, _ in samples if v == 0.0)
    assert ramp_end - fault_at == pytest.approx(1000, abs=20)
    assert all(powered for t, _, powered in samples if t < ramp_end)
    assert not any(powered for t, _, powered in samples if t >= ramp_end)
    assert t0 + LEASE_MS <= fault_at <= t0 + LEASE_MS + 10


# --------------------------------------------------------------------------- FW-3


def test_fw3_lease_expiry_stops_the_belt_within_lease_plus_ramp() -> None:
    host = running_host(6.0)
    last_renewal = host.now_ms
    samples: list[tuple[int, float]] = []
    host.advance_by(4000, every=lambda h: samples.append((h.now_ms, h.fw.true_speed_kmh)))
    assert host.state() is FwState.FAULT
    assert host.fault() is FwFault.LEASE_EXPIRED
    report = host.faults()[0]
    assert report.code is FwFault.LEASE_EXPIRED
    # lease 300 ms + 6 km/h at 3.6 km/h/s (1.67 s) + the belt's lag.
    at_rest = next(t for t, v in samples if v == 0.0)
    assert at_rest - last_renewal <= LEASE_MS + 6.0 / 3.6 * 1000 + 700
    # Never faster than it was.
    assert max(v for _, v in samples) <= 6.0 + 0.01


def test_fw3_lease_remaining_is_reported_and_renewed() -> None:
    host = running_host(2.0)
    status = host.last_status()
    assert 0 < status.lease_remaining_ms <= LEASE_MS
    host.advance_by(100)
    assert host.last_status().lease_remaining_ms <= LEASE_MS - 80


def test_fw3_repeated_set_speed_does_not_renew_the_lease() -> None:
    host = running_host(3.0)
    msg = SetSpeed(speed_kmh=3.0, accel_kmh_s=2.0, lease_ms=LEASE_MS)
    seq = host.seq.next()
    host.send(msg, seq=seq)
    for _ in range(20):
        host.advance_by(40)
        host.send(msg, seq=seq)  # the same frame again and again
    assert host.fault() is FwFault.LEASE_EXPIRED
    assert host.fw.last_applied_seq == seq


def test_fw3_lease_above_max_is_refused_and_not_renewed() -> None:
    host = running_host(3.0)
    answers = host.send(SetSpeed(speed_kmh=3.0, accel_kmh_s=2.0, lease_ms=LIMITS.max_lease_ms + 1))
    assert isinstance(answers[0], Nak)
    assert answers[0].reason is NakReason.ABOVE_CEILING
    assert host.state() is FwState.RUNNING  # no fault for the lease itself ...
    host.advance_by(
        LEASE_MS + 50,
        renew=SetSpeed(speed_kmh=3.0, accel_kmh_s=2.0, lease_ms=LIMITS.max_lease_ms + 1),
    )
    assert host.fault() is FwFault.LEASE_EXPIRED  # ... but the running lease runs out


def test_fw3_stop_ends_the_lease() -> None:
    host = running_host(3.0)
    host.send(Stop(decel_kmh_s=3.0))
    host.advance_by(3000)
    assert host.state() is FwState.IDLE
    assert host.fault() is FwFault.NONE  # no lease expiry after a STOP
    assert host.last_status().lease_remaining_ms == 0


# --------------------------------------------------------------------------- FW-4


def test_fw4_speed_above_the_ceiling_is_a_fault_not_a_clamp() -> None:
    host = running_host(4.0)
    answers = host.send(SetSpeed(speed_kmh=8.01, accel_kmh_s=1.0, lease_ms=LEASE_MS))
    assert answers[0] == Nak(seq=answers[0].seq, reason=NakReason.ABOVE_CEILING)  # type: ignore[union-attr]
    assert isinstance(answers[1], FaultReport)
    assert answers[1].code is FwFault.SPEED_ABOVE_CEILING
    assert answers[1].detail == 801
    samples: list[float] = []
    host.advance_by(3000, every=lambda h: samples.append(h.fw.true_speed_kmh))
    assert max(samples) <= 4.0 + 0.01  # never went toward 8.01
    assert samples[-1] == 0.0
    assert host.fw.target_kmh == 0.0


def test_fw4_accel_above_the_ceiling_is_a_fault() -> None:
    host = Host(QUIET)
    host.handshake(dataclasses.replace(LIMITS, max_accel_kmh_s=0.5))
    answers = host.send(SetSpeed(speed_kmh=2.0, accel_kmh_s=0.51, lease_ms=LEASE_MS))
    assert isinstance(answers[0], Nak)
    assert answers[0].reason is NakReason.ABOVE_CEILING
    assert host.fault() is FwFault.ACCEL_ABOVE_CEILING
    host.advance_by(1000)
    assert host.fw.true_speed_kmh == 0.0


@pytest.mark.parametrize("rate_kmh_s", [0.5, 1.0, 2.0])
def test_fw4_set_speed_equal_to_the_set_point_is_holding(rate_kmh_s: float) -> None:
    """A SET_SPEED whose speed equals the set-point at the wire's resolution moves nothing
    and is accepted with a rate within either ceiling (accel 1.0 here, decel above it)."""
    host = Host(QUIET)
    host.handshake(dataclasses.replace(LIMITS, max_accel_kmh_s=1.0))
    host.run_at(1.0, 1.0, for_ms=3000)
    assert host.fw.commanded_kmh == 1.0
    answers = host.send(SetSpeed(speed_kmh=1.0, accel_kmh_s=rate_kmh_s, lease_ms=LEASE_MS))
    assert not any(isinstance(m, Nak | FaultReport) for m in answers), answers
    assert host.state() is FwState.RUNNING
    assert host.fw.commanded_kmh == 1.0


def test_fw4_deceleration_below_the_set_point_is_checked_against_max_decel() -> None:
    host = Host(QUIET)
    host.handshake(dataclasses.replace(LIMITS, max_accel_kmh_s=1.0))
    host.run_at(1.0, 1.0, for_ms=3000)
    answers = host.send(SetSpeed(speed_kmh=0.99, accel_kmh_s=2.0, lease_ms=LEASE_MS))
    assert not any(isinstance(m, Nak | FaultReport) for m in answers), answers
    too_fast = LIMITS.max_decel_kmh_s + 0.01
    answers = host.send(SetSpeed(speed_kmh=0.5, accel_kmh_s=too_fast, lease_ms=LEASE_MS))
    assert host.fault() is FwFault.ACCEL_ABOVE_CEILING


def test_fw4_configure_above_compiled_ceilings_is_refused() -> None:
    host = Host(QUIET)
    host.boot()
    host.send(host_hello())
    for limits in (
        dataclasses.replace(LIMITS, max_speed_kmh=16.01),
        dataclasses.replace(LIMITS, max_accel_kmh_s=2.01),
        dataclasses.replace(LIMITS, max_decel_kmh_s=10.01),
        dataclasses.replace(LIMITS, max_lease_ms=1001),
    ):
        answers = host.send(configure_msg(limits))
        assert answers == [Nak(seq=answers[0].seq, reason=NakReason.ABOVE_CEILING)]  # type: ignore[union-attr]
    assert host.fw.configuration is None


def test_fw4_ramp_never_exceeds_the_accepted_acceleration() -> None:
    host = Host(QUIET)
    host.handshake()
    samples: list[tuple[int, float, float]] = []
    host.advance_by(
        6000,
        renew=SetSpeed(speed_kmh=6.0, accel_kmh_s=1.5, lease_ms=LEASE_MS),
        every=lambda h: samples.append((h.now_ms, h.fw.commanded_kmh, h.fw.true_speed_kmh)),
    )
    for (t0, c0, v0), (t1, c1, v1) in itertools.pairwise(samples):
        dt_s = (t1 - t0) / 1000
        assert (c1 - c0) / dt_s <= 1.5 + 1e-6
        assert (v1 - v0) / dt_s <= 1.5 + 0.05
    assert samples[-1][2] == pytest.approx(6.0, abs=0.02)


# --------------------------------------------------------------------------- FW-5

ALL_STATES = [FwState.BOOT, FwState.IDLE, FwState.RUNNING, FwState.STOPPING, FwState.FAULT]


@pytest.mark.parametrize("state", ALL_STATES, ids=lambda s: s.name)
def test_fw5_stop_is_acked_and_honoured_in_every_state(state: FwState) -> None:
    host = Host(QUIET)
    stop_in(host, state)
    seq = host.seq.peek()
    answers = host.send(Stop(decel_kmh_s=5.0))
    assert Ack(seq=seq) in answers
    assert not any(isinstance(m, Nak) for m in answers)
    host.advance_by(3000)
    assert host.fw.true_speed_kmh == 0.0
    assert not host.fw.motor_powered
    expected = {FwState.BOOT: FwState.IDLE, FwState.FAULT: FwState.FAULT}.get(state, FwState.IDLE)
    assert host.state() is expected


@pytest.mark.parametrize("state", ALL_STATES, ids=lambda s: s.name)
def test_fw5_estop_is_acked_and_cuts_power_in_every_state(state: FwState) -> None:
    host = Host(QUIET)
    stop_in(host, state)
    seq = host.seq.peek()
    answers = host.send(EStop())
    assert answers[0] == Ack(seq=seq)
    assert not host.fw.motor_powered
    assert host.fw.commanded_kmh == 0.0
    if state is FwState.BOOT:
        assert host.state() is FwState.BOOT  # motor already off, nothing to latch
    elif state is FwState.FAULT:
        assert host.fault() is FwFault.LEASE_EXPIRED  # the first code stays
    else:
        assert host.fault() is FwFault.ESTOP
        assert answers[1] == FaultReport(code=FwFault.ESTOP, detail=0)
    host.advance_by(2000)
    assert host.fw.true_speed_kmh == 0.0


def test_fw5_estop_stops_faster_than_a_controlled_stop() -> None:
    def time_to_rest(msg: Stop | EStop) -> int:
        host = running_host(8.0)
        t0 = host.now_ms
        host.send(msg)
        samples: list[tuple[int, float]] = []
        host.advance_by(5000, every=lambda h: samples.append((h.now_ms, h.fw.true_speed_kmh)))
        return next(t for t, v in samples if v == 0.0) - t0

    estop_ms = time_to_rest(EStop())
    stop_ms = time_to_rest(Stop(decel_kmh_s=3.6))
    assert estop_ms <= 8.0 / 10.0 * 1000 + 200  # ~10 km/h/s
    assert stop_ms == pytest.approx(8.0 / 3.6 * 1000, abs=400)
    assert estop_ms < stop_ms


def test_fw5_stop_ramps_at_the_requested_deceleration() -> None:
    host = running_host(6.0)
    host.send(Stop(decel_kmh_s=2.0))
    assert host.state() is FwState.STOPPING
    host.advance_by(1000)
    assert host.fw.commanded_kmh == pytest.approx(4.0, abs=0.02)
    host.send(Stop(decel_kmh_s=1.0))  # softer: ignored
    host.advance_by(500)
    assert host.fw.commanded_kmh == pytest.approx(3.0, abs=0.02)
    host.send(Stop(decel_kmh_s=4.0))  # harder: taken
    host.advance_by(500)
    assert host.fw.commanded_kmh == pytest.approx(1.0, abs=0.02)


@pytest.mark.parametrize("state", [FwState.IDLE, FwState.RUNNING, FwState.FAULT], ids=str)
def test_fw5_malformed_stop_with_valid_crc_still_stops(state: FwState) -> None:
    host = Host(QUIET)
    stop_in(host, state)
    seq = host.seq.next()
    answers = host.send_raw(raw_frame(seq, MsgId.STOP, b"\x00\x00"))  # decel 0: out of range
    assert answers[0] == Ack(seq=seq)
    if state is FwState.RUNNING:
        assert host.state() is FwState.STOPPING
        host.advance_by(500)
        # At the configured max_decel (3.6 km/h/s).
        assert host.fw.commanded_kmh == pytest.approx(4.0 - 1.8, abs=0.05)
    host.advance_by(3000)
    assert host.fw.true_speed_kmh == 0.0


def test_fw5_malformed_estop_with_valid_crc_is_an_estop() -> None:
    host = running_host(4.0)
    seq = host.seq.next()
    answers = host.send_raw(raw_frame(seq, MsgId.ESTOP, b"\x01"))  # ESTOP has no payload
    assert answers[0] == Ack(seq=seq)
    assert host.fault() is FwFault.ESTOP
    assert not host.fw.motor_powered


def test_fw5_stop_is_honoured_whatever_its_seq() -> None:
    host = running_host(4.0)
    host.send(Stop(decel_kmh_s=3.0), seq=(host.seq.peek() + 77) % 256)  # after a "gap"
    assert host.state() is FwState.STOPPING


# --------------------------------------------------------------------------- FW-6


def test_fw6_only_safe_messages_while_faulted() -> None:
    host = Host(QUIET)
    stop_in(host, FwState.FAULT)
    refused: list[Configure | SetSpeed] = [
        configure_msg(),
        SetSpeed(speed_kmh=1.0, accel_kmh_s=1.0, lease_ms=LEASE_MS),
    ]
    for msg in refused:
        seq = host.seq.peek()
        assert host.send(msg) == [Nak(seq=seq, reason=NakReason.REFUSED_IN_STATE)]
    answers = host.send(host_hello())
    assert isinstance(answers[0], Ack)
    assert isinstance(answers[1], Hello)
    assert isinstance(host.send(GetStatus())[0], Status)
    assert isinstance(host.send(Stop(decel_kmh_s=3.6))[0], Ack)
    host.advance_by(3000)
    assert host.fw.true_speed_kmh == 0.0
    assert host.state() is FwState.FAULT
    assert host.last_status().fault is FwFault.LEASE_EXPIRED
    assert isinstance(host.send(ClearFault())[0], Ack)


# --------------------------------------------------------------------------- FW-7


def test_fw7_clear_fault_refused_while_moving() -> None:
    host = running_host(5.0)
    host.send(EStop())
    host.advance_by(50)
    assert host.fw.measured_kmh > 0.1
    seq = host.seq.peek()
    assert host.send(ClearFault()) == [Nak(seq=seq, reason=NakReason.BELT_MOVING)]
    assert host.state() is FwState.FAULT


def test_fw7_clear_fault_refused_while_the_sensor_has_no_period_yet() -> None:
    # Right after a start the belt moves for up to two pulses before the sensor reads
    # anything: a reading of 0 then is not "at rest". Shown with the coarse one-pulse-per-
    # roller-turn sensor (250.9 mm), where that window is longest.
    host = Host(SimConfig(physics=quiet_physics(distance_per_pulse_mm=250.9)))
    host.handshake()
    renew = SetSpeed(speed_kmh=2.0, accel_kmh_s=2.0, lease_ms=LEASE_MS)
    while host.fw.physics.pulses < 1:
        host.advance_by(20, renew=renew)
    host.send(EStop())
    assert host.fault() is FwFault.ESTOP
    assert host.fw.measured_kmh == 0.0  # one pulse: no reading yet
    assert host.fw.true_speed_kmh > 1.0
    assert not host.fw.physics.sensor_quiet
    seq = host.seq.peek()
    assert host.send(ClearFault()) == [Nak(seq=seq, reason=NakReason.BELT_MOVING)]
    host.advance_by(500)
    assert host.fw.true_speed_kmh == 0.0
    seq = host.seq.peek()
    assert host.send(ClearFault()) == [Nak(seq=seq, reason=NakReason.BELT_MOVING)]
    host.advance_by(2000)  # the sensor's stale window (2 s cap) has passed without a pulse
    assert host.fw.physics.sensor_quiet
    seq = host.seq.peek()
    assert host.send(ClearFault()) == [Ack(seq=seq)]


def test_fw7_clear_fault_at_rest_never_restarts_the_belt() -> None:
    host = running_host(5.0)
    host.advance_by(LEASE_MS + 4000)  # lease expired, at rest
    assert host.state() is FwState.FAULT
    seq = host.seq.peek()
    assert host.send(ClearFault()) == [Ack(seq=seq)]
    assert host.state() is FwState.IDLE
    assert host.fault() is FwFault.NONE
    host.advance_by(3000)
    assert host.fw.true_speed_kmh == 0.0
    assert not host.fw.motor_powered
    status = host.last_status()
    assert status.state is FwState.IDLE
    assert status.commanded_kmh == 0.0
    assert status.lease_remaining_ms == 0
    # The configuration of this boot is kept: a new SET_SPEED moves the belt again.
    assert status.config_checksum == configure_msg().config_checksum
    host.run_at(2.0, for_ms=3000)
    assert host.fw.true_speed_kmh == pytest.approx(2.0, abs=0.05)


def test_fw7_clear_fault_outside_fault_does_nothing() -> None:
    host = running_host(3.0)
    seq = host.seq.peek()
    assert host.send(ClearFault()) == [Ack(seq=seq)]
    assert host.state() is FwState.RUNNING


# --------------------------------------------------------------------------- FW-8


def test_fw8_set_speed_before_handshake_and_configure_is_refused() -> None:
    host = Host(QUIET)
    host.boot()
    msg = SetSpeed(speed_kmh=3.0, accel_kmh_s=1.0, lease_ms=LEASE_MS)
    seq = host.seq.peek()
    assert host.send(msg) == [Nak(seq=seq, reason=NakReason.NO_HANDSHAKE)]
    host.send(host_hello())
    seq = host.seq.peek()
    assert host.send(msg) == [Nak(seq=seq, reason=NakReason.NOT_CONFIGURED)]
    host.advance_by(2000, renew=msg)
    assert host.fw.true_speed_kmh == 0.0
    assert host.state() is FwState.IDLE
    assert host.last_status().last_applied_seq is None


def test_fw8_configure_checks_in_order() -> None:
    host = Host(QUIET)
    host.boot()
    seq = host.seq.peek()
    assert host.send(configure_msg()) == [Nak(seq=seq, reason=NakReason.NO_HANDSHAKE)]
    host.send(host_hello())
    bad = dataclasses.replace(configure_msg(), config_checksum=configure_msg().config_checksum ^ 1)
    seq = host.seq.peek()
    assert host.send(bad) == [Nak(seq=seq, reason=NakReason.CONFIG_CHECKSUM)]
    seq = host.seq.peek()
    assert host.send(configure_msg()) == [Ack(seq=seq)]
    host.run_at(3.0, for_ms=500)
    seq = host.seq.peek()
    assert host.send(configure_msg()) == [Nak(seq=seq, reason=NakReason.BELT_MOVING)]


def test_fw8_mismatched_host_version_is_no_handshake() -> None:
    host = Host(QUIET)
    host.boot()
    answers = host.send(host_hello(protocol_version=2))
    assert isinstance(answers[0], Ack)
    assert isinstance(answers[1], Hello)
    assert answers[1].protocol_version == 1
    seq = host.seq.peek()
    assert host.send(configure_msg()) == [Nak(seq=seq, reason=NakReason.NO_HANDSHAKE)]


def test_fw8_config_checksum_is_echoed_in_status() -> None:
    host = Host(QUIET)
    host.boot()
    host.advance_by(100)
    assert host.last_status().config_checksum == 0
    host.handshake()
    host.advance_by(40)
    assert host.last_status().config_checksum == configure_msg().config_checksum
    assert host.fw.configuration == configure_msg()


# --------------------------------------------------------------------------- FW-9


def test_fw9_stop_holds_until_rest() -> None:
    host = running_host(4.0)
    host.send(Stop(decel_kmh_s=2.0))
    seq = host.seq.peek()
    answers = host.send(SetSpeed(speed_kmh=4.0, accel_kmh_s=2.0, lease_ms=LEASE_MS))
    assert answers == [Nak(seq=seq, reason=NakReason.REFUSED_IN_STATE)]
    seq = host.seq.peek()
    assert host.send(SetSpeed(speed_kmh=0.0, accel_kmh_s=0.5, lease_ms=LEASE_MS)) == []
    assert host.fw.last_applied_seq == seq
    host.advance_by(500)
    assert host.fw.commanded_kmh == pytest.approx(3.0, abs=0.02)  # the stop's ramp, not 0.5
    host.advance_by(4000)
    assert host.state() is FwState.IDLE
    host.run_at(2.0, for_ms=100)
    assert host.state() is FwState.RUNNING  # from rest it may start again


def test_fw9_running_to_zero_goes_idle_at_rest() -> None:
    host = running_host(3.0)
    host.run_at(0.0, accel_kmh_s=2.0, for_ms=1000)
    assert host.state() is FwState.RUNNING  # still settling
    host.run_at(0.0, accel_kmh_s=2.0, for_ms=3000)
    assert host.state() is FwState.IDLE
    assert host.fault() is FwFault.NONE
    assert not host.fw.motor_powered


# --------------------------------------------------------------------------- FW-10


def test_fw10_key_open_cuts_power_and_latches() -> None:
    host = running_host(5.0)
    host.fw.set_safety_key(False, now_ms=host.now_ms)
    assert not host.fw.motor_powered
    assert host.fault() is FwFault.SAFETY_KEY_OPEN
    host.advance_by(2000)
    assert host.fw.true_speed_kmh == 0.0
    assert host.last_status().safety_key_closed is False
    seq = host.seq.peek()
    assert host.send(ClearFault()) == [Nak(seq=seq, reason=NakReason.REFUSED_IN_STATE)]
    host.fw.safety_key_closed = True
    host.advance_by(40)
    assert host.last_status().safety_key_closed is True
    assert host.state() is FwState.FAULT  # closing the key clears nothing by itself
    seq = host.seq.peek()
    assert host.send(ClearFault()) == [Ack(seq=seq)]
    assert host.state() is FwState.IDLE


@pytest.mark.parametrize("state", [FwState.BOOT, FwState.IDLE], ids=str)
def test_fw10_key_open_latches_in_boot_and_idle(state: FwState) -> None:
    host = Host(QUIET)
    stop_in(host, state)
    host.fw.set_safety_key(False, now_ms=host.now_ms)
    assert not host.fw.motor_powered
    host.advance_by(200)
    assert host.state() is FwState.FAULT
    assert host.fault() is FwFault.SAFETY_KEY_OPEN
    # Even when the key opened during the self-test, the boot is announced.
    assert any(isinstance(f.message, Hello) for _, f in host.received)


def test_fw10_key_open_at_power_on() -> None:
    host = Host(SimConfig(physics=quiet_physics(), safety_key_closed=False))
    host.boot()
    assert host.fault() is FwFault.SAFETY_KEY_OPEN
    seq = host.seq.peek()
    host.send(host_hello())
    assert host.send(configure_msg()) == [Nak(seq=seq + 1, reason=NakReason.REFUSED_IN_STATE)]


# --------------------------------------------------------------------------- FW-11


def test_fw11_status_at_50_hz_in_every_state() -> None:
    host = Host(QUIET)
    host.boot()
    t0 = host.now_ms
    host.advance_by(1000)
    assert len(host.statuses(since_ms=t0 + 1)) == 50
    host.handshake()
    t1 = host.now_ms
    host.run_at(3.0, for_ms=1000)
    assert len(host.statuses(since_ms=t1 + 1)) in (49, 50, 51)


def test_fw11_get_status_answers_at_once() -> None:
    host = Host(QUIET)
    host.boot()
    answers = host.send(GetStatus())
    assert len(answers) == 1
    assert isinstance(answers[0], Status)
    assert answers[0].state is FwState.IDLE


def test_fw11_late_status_is_skipped_not_burst() -> None:
    host = Host(QUIET)
    host.boot()
    host.advance_by(100)
    before = len(host.statuses())
    host.advance_by(300, step_ms=300)  # the loop stalled for 300 ms
    assert len(host.statuses()) == before + 1


# --------------------------------------------------------------------------- FW-12


def test_fw12_runaway_is_caught_as_overspeed_and_power_is_cut() -> None:
    host = running_host(3.0)
    host.fw.inject(SimFault.RUNAWAY, now_ms=host.now_ms, accel_kmh_s=1.0)
    samples: list[float] = []
    host.advance_by(
        6000,
        renew=SetSpeed(speed_kmh=3.0, accel_kmh_s=2.0, lease_ms=LEASE_MS),
        every=lambda h: samples.append(h.fw.true_speed_kmh),
    )
    assert host.fault() is FwFault.OVERSPEED
    assert host.faults()[0].code is FwFault.OVERSPEED
    assert max(samples) < 3.0 + 1.5  # caught within a margin and a debounce
    assert samples[-1] == 0.0


def test_fw12_runaway_without_self_checks_runs_until_estop() -> None:
    config = SimConfig(physics=quiet_physics(), self_checks=False)
    host = running_host(3.0, config)
    host.fw.inject(SimFault.RUNAWAY, now_ms=host.now_ms, accel_kmh_s=0.5)
    renew = SetSpeed(speed_kmh=3.0, accel_kmh_s=2.0, lease_ms=LEASE_MS)
    host.advance_by(4000, renew=renew)
    assert host.state() is FwState.RUNNING
    assert host.fw.true_speed_kmh == pytest.approx(5.0, abs=0.2)
    assert host.last_status().measured_kmh > 4.5
    host.send(EStop())
    host.advance_by(1500)
    assert host.fw.true_speed_kmh == 0.0
    assert host.fault() is FwFault.ESTOP


def test_fw12_stuck_board_ignores_commands_until_power_is_cut() -> None:
    config = SimConfig(physics=quiet_physics(), self_checks=False)
    host = running_host(5.0, config)
    host.fw.inject(SimFault.STUCK_SPEED, now_ms=host.now_ms)
    host.run_at(2.0, for_ms=3000)
    assert host.fw.commanded_kmh == pytest.approx(2.0)
    assert host.fw.true_speed_kmh == pytest.approx(5.0, abs=0.01)
    host.send(EStop())
    host.advance_by(1500)
    assert host.fw.true_speed_kmh == 0.0


def test_fw12_silent_sensor_while_driving_is_a_sensor_fault() -> None:
    host = Host(QUIET)
    host.handshake()
    host.fw.inject(SimFault.SENSOR_FREEZE, now_ms=host.now_ms)  # frozen at 0
    host.run_at(3.0, for_ms=5000)
    assert host.fault() is FwFault.SENSOR_FAULT
    assert not host.fw.motor_powered


def test_fw12_frozen_reading_is_reported_while_the_belt_changes() -> None:
    config = SimConfig(physics=quiet_physics(), self_checks=False)
    host = running_host(3.0, config)
    frozen = host.fw.measured_kmh
    host.fw.inject(SimFault.SENSOR_FREEZE, now_ms=host.now_ms)
    host.run_at(6.0, for_ms=3000)
    assert host.fw.true_speed_kmh == pytest.approx(6.0, abs=0.05)
    assert host.last_status().measured_kmh == pytest.approx(frozen, abs=0.006)
    host.fw.clear(SimFault.SENSOR_FREEZE)
    host.run_at(6.0, for_ms=1000)
    assert host.last_status().measured_kmh == pytest.approx(6.0, abs=0.1)


def test_fw12_normal_runs_raise_no_self_check_fault() -> None:
    # Walker load, jitter and noise on; speed changes both ways and a stop.
    host = Host(SimConfig(), seed=11)
    host.handshake()
    for speed in (2.0, 6.0, 1.0, 8.0, 3.0):
        host.run_at(speed, for_ms=5000)
    host.send(Stop(decel_kmh_s=3.6))
    host.advance_by(4000)
    assert host.faults() == []
    assert host.state() is FwState.IDLE


# --------------------------------------------------------------------------- FW-13 / FW-14


def test_fw13_garbage_is_never_answered_and_never_acts() -> None:
    host = running_host(3.0)
    rng = random.Random(3)  # noqa: S311 - test data, not cryptography
    noise = bytes(rng.randrange(256) for _ in range(2000)).replace(bytes((SYNC,)), b"\x00")
    assert host.send_raw(noise) == []
    assert host.state() is FwState.RUNNING


def test_fw13_corrupt_frame_is_dropped_without_answer() -> None:
    host = running_host(3.0)
    frame = bytearray(encode_frame(host.seq.next(), Stop(decel_kmh_s=3.0)))
    frame[4] ^= 0x01
    assert host.send_raw(bytes(frame)) == []
    assert host.state() is FwState.RUNNING


@pytest.mark.parametrize(
    ("msg_id", "payload", "reason"),
    [
        (0x42, b"", NakReason.UNKNOWN_MESSAGE),
        (MsgId.STATUS, bytes(17), NakReason.UNKNOWN_MESSAGE),  # only a firmware sends STATUS
        (MsgId.SET_SPEED, b"\x00", NakReason.BAD_PAYLOAD),
        (MsgId.SET_SPEED, b"\xff\xff\x0a\x00\x2c\x01", NakReason.OUT_OF_RANGE),  # 655 km/h
    ],
)
def test_fw13_crc_valid_but_refused_frames_are_naked(
    msg_id: int, payload: bytes, reason: NakReason
) -> None:
    host = running_host(3.0)
    seq = host.seq.next()
    answers = host.send_raw(raw_frame(seq, msg_id, payload))
    assert answers == [Nak(seq=seq, reason=reason)]
    assert host.state() is FwState.RUNNING
    assert host.fw.target_kmh == 3.0


def test_fw13_flood_of_corrupt_frames_while_running_stops_the_belt() -> None:
    host = running_host(3.0)
    frame = bytearray(encode_frame(0, SetSpeed(speed_kmh=3.0, accel_kmh_s=2.0, lease_ms=300)))
    frame[-1] ^= 0xFF
    for _ in range(21):
        host.send_raw(bytes(frame))
    assert host.fault() is FwFault.BAD_FRAME_FLOOD
    assert host.faults()[0].detail == 21


def test_fw13_few_corrupt_frames_do_not_flood() -> None:
    host = running_host(3.0)
    frame = bytearray(encode_frame(0, GetStatus()))
    frame[-1] ^= 0xFF
    for _ in range(20):
        host.send_raw(bytes(frame))
    assert host.state() is FwState.RUNNING


# --------------------------------------------------------------------------- injected faults


def test_lease_ignored_firmware_keeps_running_but_obeys_stop() -> None:
    host = running_host(4.0)
    host.fw.inject(SimFault.LEASE_IGNORED, now_ms=host.now_ms)
    host.advance_by(3000)  # no renewal at all
    assert host.state() is FwState.RUNNING
    assert host.fw.true_speed_kmh == pytest.approx(4.0, abs=0.05)
    assert host.fault() is FwFault.NONE
    host.send(Stop(decel_kmh_s=3.6))
    host.advance_by(3000)
    assert host.fw.true_speed_kmh == 0.0
    assert host.state() is FwState.IDLE


def test_drop_frames_loses_frames_both_ways_and_leaves_seq_gaps() -> None:
    config = SimConfig(physics=quiet_physics(), faults=(InjectedFault(SimFault.DROP_FRAMES, 30),))
    host = Host(config, seed=2)
    host.advance(2000)
    statuses = host.statuses()
    assert 25 < len(statuses) < 90  # about 70 % of ~97
    seqs = [f.seq for _, f in host.received]
    gaps = sum(1 for a, b in itertools.pairwise(seqs) if (b - a) % 256 > 1)
    assert gaps > 5
    sent = 0
    for _ in range(200):
        host.send(GetStatus())
        sent += 1
    assert len(host.fw.host_frames) < sent * 0.85
    assert host.fw.frames_dropped > 0


def test_corrupt_bytes_shows_as_crc_errors_at_the_host() -> None:
    host = Host(QUIET, seed=4)
    host.boot()
    host.fw.inject(SimFault.CORRUPT_BYTES, now_ms=host.now_ms, pct=2.0)
    host.advance_by(2000)
    assert host.decoder.stats.crc_errors > 5
    assert host.fw.bytes_corrupted > 0
    assert host.statuses()  # most frames still get through
    host.fw.clear(SimFault.CORRUPT_BYTES)
    errors = host.decoder.stats.crc_errors
    host.advance_by(1000)
    assert host.decoder.stats.crc_errors == errors
    assert SimFault.CORRUPT_BYTES not in host.fw.active_faults


def test_host_frames_are_logged_with_their_time() -> None:
    seen: list[tuple[int, int]] = []
    host = Host(QUIET)
    host.fw.on_host_frame = lambda frame, now_ms: seen.append((frame.seq, now_ms))
    host.handshake()
    host.run_at(2.0, for_ms=200)
    t_stop = host.now_ms
    host.send(Stop(decel_kmh_s=3.0))
    host.advance_by(100)
    host.send(EStop())
    first = host.fw.first_host_frame((Stop, EStop), since_ms=0)
    assert first is not None
    assert first.now_ms == t_stop
    assert isinstance(first.frame.message, Stop)
    assert host.fw.first_host_frame((EStop,), since_ms=t_stop + 1) is not None
    assert host.fw.first_host_frame((Configure,), since_ms=t_stop) is None
    assert len(seen) == len(host.fw.host_frames)


def test_host_frame_log_is_bounded() -> None:
    host = Host(SimConfig(physics=quiet_physics(), host_log_size=10))
    host.boot()
    for _ in range(50):
        host.send(GetStatus())
    assert len(host.fw.host_frames) == 10


@pytest.mark.parametrize(
    ("fault", "params", "match"),
    [
        (SimFault.DROP_FRAMES, {"pct": 0.0}, "percentage"),
        (SimFault.CORRUPT_BYTES, {"pct": 101.0}, "percentage"),
        (SimFault.RUNAWAY, {"accel_kmh_s": -1.0}, "accel_kmh_s > 0"),
        (SimFault.RUNAWAY, {"pct": 5.0}, "takes no percentage"),
        (SimFault.STUCK_SPEED, {"accel_kmh_s": 1.0}, "takes no acceleration"),
        (SimFault.DISCONNECT, {}, "PtySimulator"),
    ],
)
def test_bad_injections_are_refused_with_a_clear_error(
    fault: SimFault, params: dict[str, Any], match: str
) -> None:
    fw = SimFirmware(QUIET, random.Random(1))  # noqa: S311 - simulation, not cryptography
    with pytest.raises(ValueError, match=match):
        fw.inject(fault, **params)


def test_fault_names_parse_like_the_command_line() -> None:
    assert SimFault.parse("Corrupt-Bytes") is SimFault.CORRUPT_BYTES
    with pytest.raises(ValueError, match="allowed drop_frames"):
        SimFault.parse("gremlins")


def test_same_seed_same_bytes() -> None:
    def transcript(seed: int) -> bytes:
        fw = SimFirmware(SimConfig(), random.Random(seed))  # noqa: S311 - simulation
        out = bytearray()
        out += fw.receive(encode_frame(0, host_hello()), 100)
        out += fw.receive(encode_frame(1, configure_msg()), 100)
        for t in range(100, 3000, 20):
            out += fw.receive(encode_frame(t // 20 % 256, SetSpeed(5.0, 2.0, 300)), t)
            out += fw.tick(t + 5)
        return bytes(out)

    assert transcript(9) == transcript(9)
    assert transcript(9) != transcript(10)
    decoded = FrameDecoder().feed(transcript(9))
    assert any(isinstance(f.message, Status) for f in decoded)
