"""Pure tests of the telemetry payloads and Home Assistant discovery configs."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.adapters.mqtt.telemetry import (
    diagnostics_payload,
    event_payload,
    grip_reading,
    iso_utc,
    state_payload,
)
from controller.rules.model import (
    BeltSensorReading,
    ChannelConfig,
    CoreState,
    Decision,
    Event,
    Fault,
    FaultCode,
    FirmwareState,
    FirmwareStatus,
    GripLossAction,
    Inputs,
    KeyRelayConfig,
    Mode,
    SafetyConfig,
    StageConfig,
    Stop,
    StopKind,
)
from controller.training.sessions import iso_z

TS = datetime(2025, 3, 1, 12, 30, 5, 123456, tzinfo=UTC)
NOW_MS = 1_000_000

SAFETY = SafetyConfig(
    stages=(
        StageConfig(
            1, "assisted backward walk", 2.0, 0.5, 0.2, 3.6, 1, GripLossAction.STOP_LATCH, 300
        ),
        StageConfig(
            2, "supported backward walk", 3.5, 0.5, 0.3, 3.6, 1, GripLossAction.STOP_LATCH, 800
        ),
    ),
    machine_max_kmh=8.0,
)


def firmware(received_ms: int = NOW_MS - 20, measured_kmh: float = 1.23456) -> FirmwareStatus:
    return FirmwareStatus(
        received_ms=received_ms,
        measured_kmh=measured_kmh,
        commanded_kmh=1.25,
        state=FirmwareState.RUNNING,
        fault_code=0,
        safety_key_closed=True,
        config_checksum=7,
        expected_config_checksum=7,
        boot_id=3,
    )


def inputs(**kw: Any) -> Inputs:
    values: dict[str, Any] = {
        "grip_left": True,
        "grip_right": False,
        "estop_pressed": False,
        "safety_key_present": True,
        "firmware": firmware(),
        "stage_cap": 2,
    }
    values.update(kw)
    return Inputs(**values)


FRESH_FIRMWARE = {"state": "running", "fault_code": 0, "commanded_kmh": 1.25, "version": None}

CORE = CoreState(mode=Mode.RUNNING, stage=2, target_kmh=1.5, commanded_kmh=1.333333)


def state(**kw: Any) -> dict[str, object]:
    values: dict[str, Any] = {
        "ts": TS,
        "now_ms": NOW_MS,
        "core": CORE,
        "inputs": inputs(),
        "safety": SAFETY,
        "belt_kmh": 1.2049,
        "link": {"crc_errors": 2, "rtt_ms": 3.14159},
        "session": {
            "elapsed_s": 61.006,
            "distance_m": 20.555,
            "remaining_s": 539.0,
            "client_id": "p-1",
        },
    }
    values.update(kw)
    return state_payload(**values)


def test_state_payload_has_the_documented_fields() -> None:
    payload = state()
    assert payload == {
        "ts": "2025-03-01T12:30:05.123Z",
        "state": "running",
        "stage": 2,
        "stage_name": "supported backward walk",
        "stage_max_kmh": 3.5,
        "stage_cap": 2,
        "remote_stage_cap": None,
        "speed_kmh": 1.23,
        "belt_kmh": 1.2,
        "belt_sensor_kmh": None,
        "channels_agree": None,
        "drive_mode": "firmware",
        "key_relay": None,
        "target_kmh": 1.5,
        "commanded_kmh": 1.33,
        "grip": "left",
        "safety_key": True,
        "estop": False,
        "fault": None,
        "stop_reason": None,
        "firmware": {
            "link": True,
            "age_ms": 20,
            "state": "running",
            "fault_code": 0,
            "commanded_kmh": 1.25,
            "version": None,
        },
        "session": {
            "elapsed_s": 61.01,
            "distance_m": 20.55,
            "remaining_s": 539.0,
            "client_id": "p-1",
        },
        "link": {"crc_errors": 2, "rtt_ms": 3.14},
        "warnings": [],
    }
    json.dumps(payload, allow_nan=False)  # JSON-safe


def test_fault_since_is_wall_clock_utc() -> None:
    fault = Fault(
        FaultCode.GRIP_LOST,
        "both hands off the rails for 300 ms: reset at the console",
        NOW_MS - 2500,
        StopKind.CONTROLLED,
    )
    payload = state(
        core=CoreState(mode=Mode.FAULTED, stage=1, target_kmh=0.0, commanded_kmh=0.0, fault=fault)
    )
    assert payload["fault"] == {
        "code": "grip_lost",
        "message": fault.message,
        "since": "2025-03-01T12:30:02.623Z",
        "stop": "controlled",
    }
    assert payload["state"] == "faulted"


def test_no_firmware_yet_and_stale_firmware() -> None:
    none_yet = state(inputs=inputs(firmware=None))
    assert none_yet["speed_kmh"] is None
    assert none_yet["firmware"] == {
        "link": False,
        "age_ms": None,
        "state": None,
        "fault_code": None,
        "commanded_kmh": None,
        "version": None,
    }
    stale = state(inputs=inputs(firmware=firmware(received_ms=NOW_MS - SAFETY.stale_ms - 1)))
    assert stale["firmware"] == {**FRESH_FIRMWARE, "link": False, "age_ms": SAFETY.stale_ms + 1}
    fresh_edge = state(inputs=inputs(firmware=firmware(received_ms=NOW_MS - SAFETY.stale_ms)))
    assert fresh_edge["firmware"] == {**FRESH_FIRMWARE, "link": True, "age_ms": SAFETY.stale_ms}


def test_firmware_version_and_no_link_counters_on_mqtt() -> None:
    payload = state(link=None, firmware_version="1.2.3")
    assert "link" not in payload
    firmware_fields = payload["firmware"]
    assert isinstance(firmware_fields, dict)
    assert firmware_fields["version"] == "1.2.3"


def test_diagnostics_payload_carries_the_link_loop_and_mqtt_counters() -> None:
    payload = diagnostics_payload(
        ts=TS,
        link={"crc_errors": 2, "retransmits": 1, "reconnects": 0, "loop": {"p99": 1.2345}},
    )
    assert payload == {
        "ts": "2025-03-01T12:30:05.123Z",
        "crc_errors": 2,
        "retransmits": 1,
        "reconnects": 0,
        "loop": {"p99": 1.23},
    }


def test_non_finite_values_become_null() -> None:
    payload = state(
        inputs=inputs(firmware=firmware(measured_kmh=float("nan"))),
        belt_kmh=float("inf"),
        link={
            "x": float("-inf"),
            "nested": {"y": [1.005, float("nan")]},
            "when": TS,
            "obj": object,
        },
        session=None,
    )
    assert payload["speed_kmh"] is None
    assert payload["belt_kmh"] is None
    assert payload["session"] is None
    link = payload["link"]
    assert isinstance(link, dict)
    assert link["x"] is None
    assert link["nested"] == {"y": [1.0, None]}
    assert link["when"] == "2025-03-01T12:30:05.123Z"
    assert isinstance(link["obj"], str)
    json.dumps(payload, allow_nan=False)


@pytest.mark.parametrize(
    ("left", "right", "expected"),
    [(True, True, "both"), (True, False, "left"), (False, True, "right"), (False, False, "none")],
)
def test_grip_reading(left: bool, right: bool, expected: str) -> None:
    assert grip_reading(inputs(grip_left=left, grip_right=right)) == expected


def test_unknown_stage_and_warnings_merge() -> None:
    core = CoreState(
        mode=Mode.IDLE,
        stage=9,
        target_kmh=0,
        commanded_kmh=0,
        warnings=frozenset({"grip_sensor_suspect"}),
    )
    payload = state(core=core, warnings=["config_pending", "grip_sensor_suspect"])
    assert payload["stage_name"] is None
    assert payload["stage_max_kmh"] is None
    assert payload["warnings"] == ["config_pending", "grip_sensor_suspect"]


def test_iso_utc_converts_other_zones_and_refuses_naive() -> None:
    plus2 = timezone(timedelta(hours=2))
    assert iso_utc(datetime(2025, 1, 1, 2, 0, tzinfo=plus2)) == "2025-01-01T00:00:00.000Z"
    with pytest.raises(ValueError, match="timezone-aware"):
        iso_utc(datetime(2025, 1, 1))  # noqa: DTZ001 -- the naive value is the point of the test


def test_event_payload_flattens_details_and_keeps_fixed_fields() -> None:
    event = Event(
        "grip_lost",
        "both hands off",
        {"grace_ms": 300, "speed_kmh": 1.23456, "kind": "x", "ts": None},
    )
    assert event_payload(ts=TS, event=event) == {
        "ts": "2025-03-01T12:30:05.123Z",
        "kind": "grip_lost",
        "message": "both hands off",
        "grace_ms": 300,
        "speed_kmh": 1.23,
        "detail_kind": "x",
        "detail_ts": None,
    }


@given(
    speed=st.floats(allow_nan=True, allow_infinity=True),
    details=st.dictionaries(
        st.text(max_size=8), st.none() | st.booleans() | st.integers() | st.floats() | st.text()
    ),
)
def test_payloads_are_always_json(
    speed: float, details: dict[str, str | int | float | bool | None]
) -> None:
    json.dumps(state(belt_kmh=speed, link=details), allow_nan=False)
    json.dumps(event_payload(ts=TS, event=Event("x", "y", details)), allow_nan=False)


def test_session_records_use_the_state_topics_timestamp_format() -> None:
    plus2 = timezone(timedelta(hours=2))
    for moment in (TS, datetime(2025, 1, 1, 2, 0, 0, 999_999, tzinfo=plus2)):
        assert iso_z(moment) == iso_utc(moment)


def _decision(core: CoreState, **kw: Any) -> Decision:
    return Decision(state=core, motion=Stop(3.6), **kw)


def test_SR_CHAN_2_state_carries_the_pi_sensor_and_the_cores_agreement_verdict() -> None:
    """``belt_sensor_kmh`` is the Pi's reading; ``channels_agree`` is the core's verdict
    (``Decision.channels_agree``, SR-CHAN-2), null before the first tick and whenever the core
    did not compare the channels (the cases are tested in tests/core/test_channels.py)."""
    two = replace(SAFETY, second_channel=ChannelConfig())
    pi = BeltSensorReading(speed_kmh=1.2549, pulses=40, since_pulse_ms=30)
    ticked = replace(CORE, last_tick_ms=NOW_MS)
    for verdict in (True, False, None):
        payload = state(
            safety=two,
            core=ticked,
            inputs=inputs(belt_sensor=pi),
            decision=_decision(ticked, firmware_fresh=True, channels_agree=verdict),
        )
        assert payload["belt_sensor_kmh"] == 1.25
        assert payload["channels_agree"] is verdict
    before_a_tick = state(safety=two, inputs=inputs(belt_sensor=pi), decision=None)
    assert before_a_tick["channels_agree"] is None
    nan_reading = state(
        safety=two,
        core=ticked,
        inputs=inputs(belt_sensor=replace(pi, speed_kmh=float("nan"))),
        decision=_decision(ticked),
    )
    assert nan_reading["belt_sensor_kmh"] is None  # NaN is not a speed
    assert state(safety=two, core=ticked, inputs=inputs(), decision=None)["belt_sensor_kmh"] is None


def test_SR_MON_1_state_carries_the_drive_mode_and_the_relay_the_core_holds() -> None:
    relay = replace(SAFETY, key_relay=KeyRelayConfig())
    held = _decision(CORE, key_relay=True)
    assert state(safety=relay, decision=held)["key_relay"] == "closed"
    assert state(safety=relay, decision=_decision(CORE))["key_relay"] == "open"
    assert state(safety=relay, decision=None)["key_relay"] == "open"
    assert state(safety=relay, decision=held)["drive_mode"] == "key_relay"
    assert state(safety=SAFETY, decision=held)["key_relay"] is None
    assert state(safety=SAFETY, decision=held)["drive_mode"] == "firmware"
