"""The firmware contract (docs/firmware-safety.md), FW-1 .. FW-15, on every implementation.

Each test runs on the Python simulated firmware, the native build of the C core and the AVR
ELF in simavr (``fw`` fixture, conftest.py), through the wire (the project's codec on the
implementation's pseudo-terminal) and the stdin control interface. What an implementation
cannot show is skipped with the reason, and listed in docs/firmware.md ("Conformance").
"""

from __future__ import annotations

import time

import pytest

from bench.firmware_runner import FEATURES, Session
from firmware_bridge.wire.crc import crc16
from firmware_bridge.wire.messages import (
    Ack,
    ClearFault,
    Configure,
    EStop,
    FwFault,
    FwState,
    GetStatus,
    MsgId,
    Nak,
    NakReason,
    ResetCause,
    SetSpeed,
    Status,
    Stop,
    host_hello,
)
from tests.conformance.contract import (
    DECEL_KMH_S,
    LAG_ALLOWANCE_S,
    LEASE_MS,
    RUN_KMH,
    config_for,
    estop_and_rest,
    raw_frame,
    ready,
    running,
    statuses,
)

pytestmark = pytest.mark.timeout(60)


def _needs(fw: Session, feature: str) -> None:
    if not fw.has(feature):
        pytest.skip(f"{fw.name}: {FEATURES[feature]}")


# ------------------------------------------------------------------------------ FW-1


def test_FW_1_every_boot_announces_itself_with_a_fresh_boot_id_motor_disabled(
    fw: Session,
) -> None:
    first = fw.hello
    second = fw.reboot()
    assert second.boot_id != 0
    assert second.boot_id != first.boot_id
    assert second.reset_cause is ResetCause.WATCHDOG  # `inject reboot` is a watchdog reset
    assert second.max_speed_kmh > 0
    assert second.max_accel_kmh_s > 0
    status = fw.link.latest_status()
    assert status.state is FwState.IDLE
    assert status.commanded_kmh == 0.0
    assert status.last_applied_seq is None
    assert status.config_checksum == 0  # nothing of the previous boot survives
    process = fw.process.status()
    assert process["motor_enabled"] == "0"
    assert float(process["duty_pct"]) == 0.0


def test_FW_1_a_reset_while_running_never_resumes_the_belt(fw: Session) -> None:
    running(fw)
    fw.reboot()  # the host keeps sending SET_SPEED as if nothing happened
    after = fw.link.mark()
    fw.link.wait_rx(
        lambda r: isinstance(r.message, Nak) and r.message.reason is NakReason.NO_HANDSHAKE,
        after=after,
        timeout_s=2.0,
        what="SET_SPEED refused with NO_HANDSHAKE after the reset",
    )
    fw.link.stop_renewing()
    status = fw.link.latest_status()
    assert status.state is FwState.IDLE
    assert status.commanded_kmh == 0.0
    assert fw.process.status()["motor_enabled"] == "0"
    fw.belt_at_rest()


# ------------------------------------------------------------------------------ FW-2


def test_FW_2_category_1_ramps_then_a_later_estop_makes_it_category_0(fw: Session) -> None:
    running(fw)
    fw.link.stop_renewing()  # the lease runs out: LEASE_EXPIRED is category 1 (ramp)
    ramping = fw.link.status(
        lambda s: s.fault is FwFault.LEASE_EXPIRED and 0.3 < s.commanded_kmh < RUN_KMH - 0.1,
        timeout_s=2.0,
        what="LEASE_EXPIRED with the set-point ramping down",
    )
    assert ramping.state is FwState.FAULT
    assert fw.process.status()["motor_enabled"] == "1"  # category 1: power until the end
    answer = fw.link.request(EStop())
    assert isinstance(answer, Ack)
    fw.process.wait_status(
        lambda s: s["motor_enabled"] == "0", timeout_s=0.5, what="ESTOP cutting motor power"
    )
    status = fw.link.latest_status()
    assert status.fault is FwFault.LEASE_EXPIRED  # the first fault stays latched
    assert status.commanded_kmh == 0.0


def test_FW_2_the_first_fault_stays_latched(fw: Session) -> None:
    ready(fw)
    fw.link.request(EStop())
    fw.fault_latched(FwFault.ESTOP, timeout_s=1.0)
    fw.process.ok("key open")
    status = fw.link.status(
        lambda s: not s.safety_key_closed, timeout_s=1.0, what="the key reading open"
    )
    assert status.fault is FwFault.ESTOP


# ------------------------------------------------------------------------------ FW-3


def test_FW_3_the_lease_stops_the_belt_by_the_firmwares_own_ramp(fw: Session) -> None:
    running(fw)
    fw.link.stop_renewing()
    t0 = time.monotonic()
    fw.fault_latched(FwFault.LEASE_EXPIRED, timeout_s=LEASE_MS / 1000 + 0.5)
    frames = statuses(fw, count=5)
    set_points = [s.commanded_kmh for _, s in frames]
    assert set_points == sorted(set_points, reverse=True)  # a ramp down, never up
    budget_s = LEASE_MS / 1000 + RUN_KMH / DECEL_KMH_S + LAG_ALLOWANCE_S
    fw.belt_at_rest(timeout_s=budget_s + 2.0)
    took_s = time.monotonic() - t0
    assert took_s <= budget_s, f"{fw.name}: belt at rest {took_s:.2f} s after the last SET_SPEED"
    assert fw.process.status()["motor_enabled"] == "0"


def test_FW_3_a_repeated_set_speed_does_not_renew_the_lease(fw: Session) -> None:
    config = running(fw)
    fw.link.stop_renewing()
    repeat = SetSpeed(speed_kmh=RUN_KMH, accel_kmh_s=config.max_accel_kmh_s, lease_ms=LEASE_MS)
    seq = fw.link.send(repeat)
    after = fw.link.mark()
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        fw.link.send(repeat, seq=seq)  # the same SEQ again and again: never a renewal
        frames = fw.link.frames_since(after)
        if any(
            isinstance(r.message, Status) and r.message.fault is FwFault.LEASE_EXPIRED
            for r in frames
        ):
            break
        time.sleep(0.02)  # the controller's tick: pacing, not a wait for a result
    fw.fault_latched(FwFault.LEASE_EXPIRED, timeout_s=0.5)


def test_FW_3_a_lease_above_max_lease_is_refused_and_renews_nothing(fw: Session) -> None:
    config = ready(fw)
    too_long = SetSpeed(speed_kmh=1.0, accel_kmh_s=1.0, lease_ms=config.max_lease_ms + 1)
    assert fw.link.nak(too_long) is NakReason.ABOVE_CEILING
    status = fw.link.latest_status()
    assert status.state is FwState.IDLE  # no fault: the lease simply is not granted
    assert status.last_applied_seq is None
    assert status.commanded_kmh == 0.0


def test_FW_3_status_reports_the_lease_remaining(fw: Session) -> None:
    running(fw)
    status = fw.link.latest_status()
    assert 0 < status.lease_remaining_ms <= LEASE_MS
    estop_and_rest(fw)
    assert fw.link.latest_status().lease_remaining_ms == 0


# ------------------------------------------------------------------------------ FW-4


@pytest.mark.parametrize("field", ["max_speed_kmh", "max_accel_kmh_s"])
def test_FW_4_configure_above_a_compiled_in_ceiling_is_refused(fw: Session, field: str) -> None:
    fw.link.handshake()
    config = config_for(fw)
    limits = {
        "max_speed_kmh": config.max_speed_kmh,
        "max_accel_kmh_s": config.max_accel_kmh_s,
        "max_decel_kmh_s": config.max_decel_kmh_s,
        "max_lease_ms": config.max_lease_ms,
    }
    limits[field] = round(getattr(fw.hello, field) + 0.01, 2)
    above = Configure.with_checksum(**limits)  # type: ignore[arg-type]  # the four limits
    assert fw.link.nak(above) is NakReason.ABOVE_CEILING
    assert fw.link.latest_status().config_checksum == 0  # changed nothing


def test_FW_4_a_speed_above_the_limit_latches_and_is_never_clamped(fw: Session) -> None:
    config = ready(fw)
    above = SetSpeed(speed_kmh=config.max_speed_kmh + 0.01, accel_kmh_s=1.0, lease_ms=LEASE_MS)
    assert fw.link.nak(above) is NakReason.ABOVE_CEILING
    status = fw.fault_latched(FwFault.SPEED_ABOVE_CEILING, timeout_s=1.0)
    assert status.commanded_kmh == 0.0
    assert fw.process.status()["motor_enabled"] == "0"


def test_FW_4_an_acceleration_above_the_limit_latches(fw: Session) -> None:
    config = ready(fw)
    fast = SetSpeed(speed_kmh=1.0, accel_kmh_s=config.max_accel_kmh_s + 0.01, lease_ms=LEASE_MS)
    assert fw.link.nak(fast) is NakReason.ABOVE_CEILING
    fw.fault_latched(FwFault.ACCEL_ABOVE_CEILING, timeout_s=1.0)


def test_FW_4_a_deceleration_above_max_decel_latches(fw: Session) -> None:
    config = running(fw)
    fw.link.stop_renewing()
    slower = SetSpeed(speed_kmh=1.0, accel_kmh_s=config.max_decel_kmh_s + 0.01, lease_ms=LEASE_MS)
    assert fw.link.nak(slower) is NakReason.ABOVE_CEILING
    fw.fault_latched(FwFault.ACCEL_ABOVE_CEILING, timeout_s=1.0)


def _applied(fw: Session, seq: int) -> Status:
    """The first STATUS that shows SET_SPEED ``seq`` applied, or the firmware out of RUNNING."""
    return fw.link.status(
        lambda s: s.last_applied_seq == seq or s.state is not FwState.RUNNING,
        timeout_s=1.0,
        what=f"SET_SPEED seq {seq} applied",
    )


def test_FW_4_rising_falling_or_holding_is_decided_at_the_wire_resolution(fw: Session) -> None:
    """A SET_SPEED equal to the set-point at 0.01 km/h is holding, accepted within either
    ceiling; one wire step below is a deceleration, one step above an acceleration."""
    config = running(fw)
    rate_kmh_s = config.max_decel_kmh_s  # within the decel ceiling, above the accel ceiling
    assert rate_kmh_s > config.max_accel_kmh_s
    fw.link.status(
        lambda s: s.commanded_kmh == RUN_KMH, timeout_s=5.0, what=f"the set-point at {RUN_KMH}"
    )
    fw.link.stop_renewing()

    # holding at the decel rate: applied, still running, nothing latched
    seq = fw.link.send(SetSpeed(speed_kmh=RUN_KMH, accel_kmh_s=rate_kmh_s, lease_ms=LEASE_MS))
    status = _applied(fw, seq)
    assert (status.state, status.fault) == (FwState.RUNNING, FwFault.NONE), f"{fw.name}: {status}"

    # one step below: a deceleration within max_decel
    lower_kmh = round(RUN_KMH - 0.01, 2)
    seq = fw.link.send(SetSpeed(speed_kmh=lower_kmh, accel_kmh_s=rate_kmh_s, lease_ms=LEASE_MS))
    status = _applied(fw, seq)
    assert (status.state, status.fault) == (FwState.RUNNING, FwFault.NONE), f"{fw.name}: {status}"
    status = fw.link.status(
        lambda s: s.commanded_kmh == lower_kmh or s.state is not FwState.RUNNING,
        timeout_s=1.0,
        what=f"the set-point at {lower_kmh}",
    )
    assert status.state is FwState.RUNNING, f"{fw.name}: {status}"

    # holding again at the new set-point, then one step above it at the same rate: an
    # acceleration above max_accel, refused and latched
    seq = fw.link.send(SetSpeed(speed_kmh=lower_kmh, accel_kmh_s=rate_kmh_s, lease_ms=LEASE_MS))
    status = _applied(fw, seq)
    assert (status.state, status.fault) == (FwState.RUNNING, FwFault.NONE), f"{fw.name}: {status}"
    above = SetSpeed(speed_kmh=RUN_KMH, accel_kmh_s=rate_kmh_s, lease_ms=LEASE_MS)
    assert fw.link.nak(above) is NakReason.ABOVE_CEILING
    fw.fault_latched(FwFault.ACCEL_ABOVE_CEILING, timeout_s=1.0)


def test_FW_4_holding_above_both_ceilings_latches(fw: Session) -> None:
    config = running(fw)
    fw.link.status(
        lambda s: s.commanded_kmh == RUN_KMH, timeout_s=5.0, what=f"the set-point at {RUN_KMH}"
    )
    fw.link.stop_renewing()
    too_fast = round(max(config.max_accel_kmh_s, config.max_decel_kmh_s) + 0.01, 2)
    holding = SetSpeed(speed_kmh=RUN_KMH, accel_kmh_s=too_fast, lease_ms=LEASE_MS)
    assert fw.link.nak(holding) is NakReason.ABOVE_CEILING
    fw.fault_latched(FwFault.ACCEL_ABOVE_CEILING, timeout_s=1.0)


def test_FW_4_the_ramp_never_exceeds_the_accepted_acceleration(fw: Session) -> None:
    ready(fw)
    accel_kmh_s = 1.0
    fw.link.start_renewing(RUN_KMH, accel_kmh_s, LEASE_MS)
    frames = statuses(fw, count=40)
    fw.link.stop_renewing()
    ramp = [(s.uptime_ms, s.commanded_kmh) for _, s in frames if s.state is FwState.RUNNING]
    assert len(ramp) >= 10
    steepest = 0.0
    for (t_a, v_a), (t_b, v_b) in zip(ramp, ramp[5:], strict=False):
        if t_b > t_a:
            steepest = max(steepest, (v_b - v_a) / ((t_b - t_a) / 1000))
    # one wire unit (0.01 km/h) of rounding at each end of the interval
    assert steepest <= accel_kmh_s + 0.02 / 0.1, f"{fw.name}: ramp at {steepest:.2f} km/h/s"
    assert ramp[-1][1] > ramp[0][1]  # it did ramp up


# ------------------------------------------------------------------------------ FW-5


def test_FW_5_stop_is_acked_in_every_state(fw: Session) -> None:
    # IDLE, before the handshake: nothing to stop, still an ACK
    assert isinstance(fw.link.request(Stop(decel_kmh_s=DECEL_KMH_S)), Ack)
    assert fw.link.latest_status().state is FwState.IDLE
    running(fw)
    # RUNNING -> STOPPING
    seq = fw.link.send(Stop(decel_kmh_s=DECEL_KMH_S))
    fw.link.stop_renewing()
    fw.link.status(lambda s: s.state is FwState.STOPPING, timeout_s=1.0, what="STOPPING")
    # STOPPING: the same frame again (a retransmission with the same SEQ) is still ACKed
    assert isinstance(fw.link.request(Stop(decel_kmh_s=DECEL_KMH_S), seq=seq), Ack)
    fw.link.status(lambda s: s.state is FwState.IDLE, timeout_s=5.0, what="IDLE at rest")
    assert fw.process.status()["motor_enabled"] == "0"
    # FAULT
    fw.link.request(EStop())
    fw.fault_latched(FwFault.ESTOP, timeout_s=1.0)
    assert isinstance(fw.link.request(Stop(decel_kmh_s=DECEL_KMH_S)), Ack)
    assert fw.link.latest_status().fault is FwFault.ESTOP


def test_FW_5_estop_before_the_handshake_and_out_of_order(fw: Session) -> None:
    answer = fw.link.request(EStop(), seq=200)  # no HELLO yet, SEQ out of nowhere
    assert isinstance(answer, Ack)
    fw.fault_latched(FwFault.ESTOP, timeout_s=1.0)


def test_FW_5_estop_while_running_cuts_power(fw: Session) -> None:
    running(fw)
    answer = fw.link.request(EStop(), seq=(fw.link.next_seq() + 100) % 256)
    assert isinstance(answer, Ack)
    fw.link.stop_renewing()
    fw.process.wait_status(
        lambda s: s["motor_enabled"] == "0", timeout_s=0.5, what="motor power cut"
    )
    fw.fault_latched(FwFault.ESTOP, timeout_s=1.0)
    fw.belt_at_rest(timeout_s=3.0)


def test_FW_5_a_malformed_stop_still_stops(fw: Session) -> None:
    running(fw)
    seq = fw.link.next_seq()
    after = fw.link.mark()
    fw.link.write(raw_frame(seq, MsgId.STOP, b"\x01"))  # 1 payload byte instead of 2
    assert isinstance(fw.link.answer(seq, after=after), Ack)
    fw.link.stop_renewing()
    fw.link.status(
        lambda s: s.state in (FwState.STOPPING, FwState.IDLE),
        timeout_s=1.0,
        what="the malformed STOP stopping the belt",
    )
    fw.link.status(lambda s: s.state is FwState.IDLE, timeout_s=5.0, what="IDLE at rest")


def test_FW_5_a_malformed_estop_is_an_estop(fw: Session) -> None:
    ready(fw)
    seq = fw.link.next_seq()
    after = fw.link.mark()
    fw.link.write(raw_frame(seq, MsgId.ESTOP, b"\x00"))  # ESTOP has no payload
    assert isinstance(fw.link.answer(seq, after=after), Ack)
    fw.fault_latched(FwFault.ESTOP, timeout_s=1.0)


# ------------------------------------------------------------------------------ FW-6


def test_FW_6_only_safe_messages_while_faulted(fw: Session) -> None:
    config = ready(fw)
    fw.link.request(EStop())
    fw.fault_latched(FwFault.ESTOP, timeout_s=1.0)
    assert fw.link.nak(config) is NakReason.REFUSED_IN_STATE
    motion = SetSpeed(speed_kmh=1.0, accel_kmh_s=1.0, lease_ms=LEASE_MS)
    assert fw.link.nak(motion) is NakReason.REFUSED_IN_STATE
    assert isinstance(fw.link.request(host_hello()), Ack)
    after = fw.link.mark()
    fw.link.send(GetStatus())
    fw.link.wait_rx(
        lambda r: isinstance(r.message, Status), after=after, timeout_s=0.5, what="STATUS"
    )
    frames = statuses(fw, count=10)
    assert all(s.fault is FwFault.ESTOP and s.state is FwState.FAULT for _, s in frames)
    assert fw.link.latest_status().commanded_kmh == 0.0


# ------------------------------------------------------------------------------ FW-7


def test_FW_7_clear_fault_only_at_rest_and_it_never_restarts_the_belt(fw: Session) -> None:
    config = running(fw)
    fw.link.stop_renewing()
    fw.link.request(EStop())
    assert fw.link.nak(ClearFault()) is NakReason.BELT_MOVING  # the belt is still turning
    fw.belt_at_rest()
    fw.link.status(lambda s: s.measured_kmh <= 0.1, timeout_s=5.0, what="the sensor at rest")
    assert isinstance(fw.link.request(ClearFault()), Ack)
    frames = statuses(fw, count=15)
    assert all(s.state is FwState.IDLE for _, s in frames)
    assert all(s.commanded_kmh == 0.0 and s.lease_remaining_ms == 0 for _, s in frames)
    assert frames[-1][1].config_checksum == config.config_checksum  # configuration kept
    assert fw.process.status()["motor_enabled"] == "0"
    assert float(fw.process.status()["belt_kmh"]) == 0.0


def test_FW_7_clear_fault_is_refused_while_the_key_is_open(fw: Session) -> None:
    ready(fw)
    fw.process.ok("key open")
    fw.fault_latched(FwFault.SAFETY_KEY_OPEN, timeout_s=1.0)
    assert fw.link.nak(ClearFault()) is NakReason.REFUSED_IN_STATE
    fw.process.ok("key closed")
    fw.link.status(lambda s: s.safety_key_closed, timeout_s=1.0, what="the key closed")
    assert isinstance(fw.link.request(ClearFault()), Ack)
    fw.link.status(lambda s: s.state is FwState.IDLE, timeout_s=1.0, what="IDLE")


def test_FW_7_clear_fault_outside_fault_changes_nothing(fw: Session) -> None:
    config = ready(fw)
    assert isinstance(fw.link.request(ClearFault()), Ack)
    status = fw.link.latest_status()
    assert status.state is FwState.IDLE
    assert status.config_checksum == config.config_checksum


# ------------------------------------------------------------------------------ FW-8


def test_FW_8_no_motion_before_the_handshake_and_configure(fw: Session) -> None:
    motion = SetSpeed(speed_kmh=1.0, accel_kmh_s=1.0, lease_ms=LEASE_MS)
    config = config_for(fw)
    assert fw.link.nak(motion) is NakReason.NO_HANDSHAKE
    assert fw.link.nak(config) is NakReason.NO_HANDSHAKE
    # a HELLO with another protocol version is no handshake
    assert isinstance(fw.link.request(host_hello(protocol_version=2)), Ack)
    assert fw.link.nak(motion) is NakReason.NO_HANDSHAKE
    fw.link.handshake()
    assert fw.link.nak(motion) is NakReason.NOT_CONFIGURED
    bad = Configure(
        max_speed_kmh=config.max_speed_kmh,
        max_accel_kmh_s=config.max_accel_kmh_s,
        max_decel_kmh_s=config.max_decel_kmh_s,
        max_lease_ms=config.max_lease_ms,
        config_checksum=config.config_checksum ^ 0x0101,
    )
    assert fw.link.nak(bad) is NakReason.CONFIG_CHECKSUM
    assert fw.link.latest_status().config_checksum == 0
    fw.link.configure(config)
    status = fw.link.latest_status()
    assert status.config_checksum == config.config_checksum
    assert status.commanded_kmh == 0.0  # configuring moves nothing


def test_FW_8_configure_only_in_idle(fw: Session) -> None:
    config = running(fw)
    assert fw.link.nak(config) is NakReason.BELT_MOVING


def test_FW_8_a_corrupted_stored_configuration_latches_not_configured(fw: Session) -> None:
    pytest.skip(
        f"{fw.name}: the stored configuration cannot be corrupted through the wire or the "
        "control interface; the C core's unit tests and the simulator's tests cover it"
    )


# ------------------------------------------------------------------------------ FW-9


def test_FW_9_a_stop_holds_until_rest(fw: Session) -> None:
    config = running(fw)
    assert isinstance(fw.link.request(Stop(decel_kmh_s=DECEL_KMH_S)), Ack)
    fw.link.stop_renewing()
    fw.link.status(lambda s: s.state is FwState.STOPPING, timeout_s=1.0, what="STOPPING")
    again = SetSpeed(speed_kmh=RUN_KMH, accel_kmh_s=config.max_accel_kmh_s, lease_ms=LEASE_MS)
    assert fw.link.nak(again) is NakReason.REFUSED_IN_STATE
    zero = SetSpeed(speed_kmh=0.0, accel_kmh_s=config.max_accel_kmh_s, lease_ms=LEASE_MS)
    seq = fw.link.send(zero)  # agrees with the stop: accepted, no answer
    status = fw.link.status(
        lambda s: s.last_applied_seq == seq, timeout_s=1.0, what="the SET_SPEED 0 applied"
    )
    assert status.state in (FwState.STOPPING, FwState.IDLE)
    fw.link.status(lambda s: s.state is FwState.IDLE, timeout_s=5.0, what="IDLE at rest")


def test_FW_9_running_with_target_zero_goes_idle_at_rest(fw: Session) -> None:
    config = running(fw)
    # a rate within both limits: at set-point 0 a SET_SPEED 0 is no longer a deceleration
    fw.link.start_renewing(0.0, config.max_accel_kmh_s, LEASE_MS)
    fw.link.status(
        lambda s: s.state is FwState.IDLE and s.fault is FwFault.NONE,
        timeout_s=5.0,
        what="IDLE at rest after target 0",
    )
    fw.link.stop_renewing()


# ------------------------------------------------------------------------------ FW-10


def test_FW_10_an_open_key_latches_in_idle_and_refuses_motion(fw: Session) -> None:
    ready(fw)
    fw.process.ok("key open")
    status = fw.fault_latched(FwFault.SAFETY_KEY_OPEN, timeout_s=1.0)
    assert not status.safety_key_closed
    motion = SetSpeed(speed_kmh=1.0, accel_kmh_s=1.0, lease_ms=LEASE_MS)
    assert fw.link.nak(motion) is NakReason.REFUSED_IN_STATE


def test_FW_10_an_open_key_at_boot_latches(fw: Session) -> None:
    fw.process.ok("key open")
    after = fw.link.mark()
    fw.process.ok("inject reboot")
    fw.link.hello_after(after, timeout_s=5.0)
    fw.fault_latched(FwFault.SAFETY_KEY_OPEN, timeout_s=2.0)


def test_FW_10_an_open_key_while_running_cuts_power(fw: Session) -> None:
    running(fw)
    fw.process.ok("key open")
    # the key is in the power path: the belt loses its drive at once, whatever the firmware does
    fw.process.wait_status(
        lambda s: float(s["belt_kmh"]) < RUN_KMH - 0.5 and s.get("motor_powered", "0") == "0",
        timeout_s=1.0,
        what="the belt losing its drive to the open key",
    )
    fw.fault_latched(FwFault.SAFETY_KEY_OPEN, timeout_s=1.0)
    fw.link.stop_renewing()
    fw.belt_at_rest(timeout_s=3.0)
    assert fw.process.status()["motor_enabled"] == "0"  # the firmware dropped its enable too


# ------------------------------------------------------------------------------ FW-11


def test_FW_11_status_at_20_hz_or_faster_in_every_state(fw: Session) -> None:
    def rate(frames: list[tuple[float, Status]]) -> float:
        # by the firmware's own clock (STATUS uptime_ms): a loaded host or an emulator running
        # behind real time cannot make a good firmware fail, nor hide a slow one
        span_ms = frames[-1][1].uptime_ms - frames[0][1].uptime_ms
        return (len(frames) - 1) / (span_ms / 1000)

    idle = statuses(fw, count=26)
    assert rate(idle) >= 20.0, f"{fw.name}: {rate(idle):.1f} STATUS/s in IDLE"
    fw.link.request(EStop())
    fw.fault_latched(FwFault.ESTOP, timeout_s=1.0)
    faulted = statuses(fw, count=26)
    assert rate(faulted) >= 20.0, f"{fw.name}: {rate(faulted):.1f} STATUS/s in FAULT"


def test_FW_11_answers_within_20_ms(fw: Session) -> None:
    delays_ms: list[float] = []
    for _ in range(15):
        after = fw.link.mark()
        t0 = time.monotonic()
        seq = fw.link.send(Stop(decel_kmh_s=DECEL_KMH_S))
        fw.link.answer(seq, after=after)
        rx = next(r for r in fw.link.frames_since(after) if isinstance(r.message, Ack))
        delays_ms.append((rx.t_s - t0) * 1000)
    delays_ms.sort()
    # Measured at the host, so the pseudo-terminal, this process's scheduling and (emulated
    # chip) the emulator's 1 ms slices are inside it: the lower quartile shows the firmware
    # answers within 20 ms without failing on a loaded CI machine; the emulated chip's own
    # figure is in docs/performance.md.
    assert delays_ms[len(delays_ms) // 4] <= 20.0, f"{fw.name}: ACK delays {delays_ms}"


def test_FW_11_get_status_gets_a_status(fw: Session) -> None:
    after = fw.link.mark()
    fw.link.send(GetStatus())
    fw.link.wait_rx(
        lambda r: isinstance(r.message, Status), after=after, timeout_s=0.2, what="STATUS"
    )


# ------------------------------------------------------------------------------ FW-12


def test_FW_12_a_runaway_motor_latches_overspeed_and_loses_power(fw: Session) -> None:
    running(fw)
    fw.process.ok("inject runaway 4")
    fw.fault_latched(FwFault.OVERSPEED, timeout_s=5.0)
    fw.process.wait_status(
        lambda s: s["motor_enabled"] == "0", timeout_s=0.5, what="motor power cut"
    )
    fw.link.stop_renewing()
    fw.process.ok("clear runaway")
    fw.belt_at_rest(timeout_s=5.0)


def test_FW_12_a_silent_sensor_while_driving_latches_sensor_fault(fw: Session) -> None:
    config = ready(fw)
    # Freeze only once the reading is exactly 0: a belt still creeping from the previous test
    # would freeze a small non-zero reading, which is not a silent sensor.
    fw.link.status(lambda s: s.measured_kmh == 0.0, timeout_s=5.0, what="the sensor reading 0")
    fw.process.ok("inject sensor_freeze")  # frozen at rest: the sensor reads 0 from now on
    fw.link.start_renewing(RUN_KMH, config.max_accel_kmh_s, LEASE_MS)
    fw.fault_latched(FwFault.SENSOR_FAULT, timeout_s=8.0)
    fw.link.stop_renewing()
    fw.process.wait_status(
        lambda s: s["motor_enabled"] == "0", timeout_s=0.5, what="motor power cut"
    )


def test_FW_12_the_watchdog_resets_a_hung_firmware_into_the_safe_boot_state(
    fw: Session,
) -> None:
    _needs(fw, "watchdog")
    running(fw)
    previous = fw.hello.boot_id
    after = fw.link.mark()
    fw.process.ok("inject hang")
    hello = fw.link.hello_after(after, timeout_s=5.0)
    fw.link.stop_renewing()
    assert hello.reset_cause is ResetCause.WATCHDOG
    assert hello.boot_id != previous
    fw.hello = hello
    fw.link.status(lambda s: s.state is FwState.IDLE, timeout_s=2.0, what="IDLE after the reset")
    assert fw.process.status()["motor_enabled"] == "0"
    fw.belt_at_rest(timeout_s=5.0)


def test_FW_12_motor_driver_fault(fw: Session) -> None:
    pytest.skip(
        f"{fw.name}: the MC2100 reports no fault to the firmware (no driver fault input is "
        "wired), so MOTOR_FAULT cannot latch on this hardware; see docs/firmware.md"
    )


def test_FW_12_internal_self_check(fw: Session) -> None:
    pytest.skip(
        f"{fw.name}: a failing stack guard or RAM check cannot be provoked through the wire "
        "or the control interface; the C core's unit tests cover the INTERNAL path"
    )


# ------------------------------------------------------------------------------ FW-13


def test_FW_13_corrupt_frames_never_act_and_get_no_answer(fw: Session) -> None:
    ready(fw)
    good = raw_frame(fw.link.next_seq(), MsgId.ESTOP)
    bad_crc = good[:-1] + bytes((good[-1] ^ 0x40,))
    after = fw.link.mark()
    fw.link.write(b"\x00\xa5\xff\x13\x37" + bad_crc + b"\xa5\x05")
    probe = fw.link.send(GetStatus())  # answered in order: anything for the junk came first
    fw.link.wait_rx(
        lambda r: isinstance(r.message, Status), after=after, timeout_s=1.0, what="STATUS"
    )
    seen = fw.link.frames_since(after)
    assert not [r for r in seen if isinstance(r.message, Ack | Nak) and r.message.seq != probe]
    assert fw.link.latest_status().state is FwState.IDLE  # the ESTOP with a bad CRC did nothing


@pytest.mark.parametrize(
    ("msg_id", "payload", "reason"),
    [
        (0x42, b"", NakReason.UNKNOWN_MESSAGE),
        (MsgId.SET_SPEED, b"\x64\x00", NakReason.BAD_PAYLOAD),
        (MsgId.SET_SPEED, b"\xb9\x0b\x64\x00\x2c\x01", NakReason.OUT_OF_RANGE),  # 30.01 km/h
    ],
)
def test_FW_13_crc_valid_but_refused_frames_are_naked(
    fw: Session, msg_id: int, payload: bytes, reason: NakReason
) -> None:
    ready(fw)
    seq = fw.link.next_seq()
    after = fw.link.mark()
    fw.link.write(raw_frame(seq, msg_id, payload))
    answer = fw.link.answer(seq, after=after)
    assert isinstance(answer, Nak)
    assert answer.reason is reason
    status = fw.link.latest_status()
    assert status.state is FwState.IDLE
    assert status.last_applied_seq is None


def test_FW_13_a_flood_of_rejected_frames_while_running_stops_the_belt(fw: Session) -> None:
    running(fw)
    flood = b"".join(raw_frame((100 + i) % 256, 0x42) for i in range(30))
    fw.link.write(flood)
    fw.fault_latched(FwFault.BAD_FRAME_FLOOD, timeout_s=2.0)
    fw.link.stop_renewing()
    fw.belt_at_rest(timeout_s=5.0)


# ------------------------------------------------------------------------------ FW-14


def test_FW_14_out_of_range_fields_are_refused_never_clamped(fw: Session) -> None:
    config = ready(fw)
    configure_payload = bytearray(raw_frame(0, MsgId.CONFIGURE, b"\x00" * 10)[4:-2])
    # CONFIGURE with max_lease_ms 10001 (protocol range 1..10000) and a matching checksum
    configure_payload[0:2] = round(config.max_speed_kmh * 100).to_bytes(2, "little")
    configure_payload[2:4] = round(config.max_accel_kmh_s * 100).to_bytes(2, "little")
    configure_payload[4:6] = round(config.max_decel_kmh_s * 100).to_bytes(2, "little")
    configure_payload[6:8] = (10_001).to_bytes(2, "little")
    configure_payload[8:10] = crc16(bytes(configure_payload[0:8])).to_bytes(2, "little")
    seq = fw.link.next_seq()
    after = fw.link.mark()
    fw.link.write(raw_frame(seq, MsgId.CONFIGURE, bytes(configure_payload)))
    answer = fw.link.answer(seq, after=after)
    assert isinstance(answer, Nak)
    assert answer.reason is NakReason.OUT_OF_RANGE
    # SET_SPEED with accel 0 (range 0.01..) : refused, not rounded up
    seq = fw.link.next_seq()
    after = fw.link.mark()
    fw.link.write(raw_frame(seq, MsgId.SET_SPEED, b"\x64\x00\x00\x00\x2c\x01"))
    answer = fw.link.answer(seq, after=after)
    assert isinstance(answer, Nak)
    assert answer.reason is NakReason.OUT_OF_RANGE
    status = fw.link.latest_status()
    assert status.state is FwState.IDLE
    assert status.config_checksum == config.config_checksum
    assert status.commanded_kmh == 0.0


# ------------------------------------------------------------------------------ FW-15


def test_FW_15_the_sensor_resolves_the_stage_1_start_speed(fw: Session) -> None:
    ready(fw)
    fw.run_at(0.5, accel_kmh_s=1.0, lease_ms=LEASE_MS)
    frames = statuses(fw, count=50)
    readings = [s.measured_kmh for _, s in frames]
    # Between pulses the reading never falls to 0 at the start speed (the resolution FW-15
    # asks for) ...
    assert min(readings) > 0.1, f"{fw.name}: {readings}"
    # ... and once the belt has settled (0.5 s, more than three of its 150 ms time constants
    # after the reading first reached the speed) it reads the speed within 0.15 km/h.
    settled = readings[25:]
    assert all(0.35 <= v <= 0.65 for v in settled), f"{fw.name}: {readings}"
    t0 = time.monotonic()
    estop_and_rest(fw)
    # a reading goes stale within 3 pulse periods (90 ms each at 0.5 km/h), capped at 2 s
    assert time.monotonic() - t0 < 2.5
