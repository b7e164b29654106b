"""The shipped configuration files load, and every refused file names its line and key path.

Each file under tests/config/bad/ is a complete configuration with exactly one defect; the
table below says where the defect is and what the message must say. ``check-config`` must
exit with 78 (EX_CONFIG) and print exactly one problem line for it.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from controller.rules.model import GripLossAction, SafetyConfig, StageConfig
from controller.settings.config import EXIT_CONFIG, ConfigError, load_config, load_config_report
from controller.settings.schema import AppConfig
from controller.tools.checkconfig import check_config_main

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
BAD = HERE / "bad"
SHIPPED = (ROOT / "config" / "treadmill.yaml", ROOT / "config" / "demo.yaml")

# file name -> (line, key path, a fragment of the message)
BAD_FILES: dict[str, tuple[int, str, str]] = {
    "syntax_error": (3, "(syntax)", "mapping values are not allowed here"),
    "duplicate_key": (32, "stages[1].max_kmh", "already set at line 30"),
    "unknown_key": (36, "control.stop_decel_kmhs", "did you mean 'stop_decel_kmh_s'?"),
    "wrong_type": (6, "serial.baud", "valid integer; got 'fast'"),
    "out_of_range": (36, "control.rate_hz", "must be from 10 to 200 Hz; got 500"),
    "stage_above_ceiling": (30, "stages[1].max_kmh", "up to firmware.max_speed_kmh"),
    "zero_decel": (27, "stages[0].decel_kmh_s", "from 0.01 to 3.6 km/h/s; got 0"),
    # SR-CONFIG-3: below the 0.01 km/h/s a SET_SPEED can carry.
    "accel_below_wire_resolution": (
        26,
        "stages[0].accel_kmh_s",
        "from 0.01 to 3.6 km/h/s; got 0.001",
    ),
    "decel_below_wire_resolution": (
        27,
        "stages[0].decel_kmh_s",
        "from 0.01 to 3.6 km/h/s; got 0.005",
    ),
    "grace_above_bound": (28, "stages[0].grip.grace_ms", "up to grip_sensor.max_grace_ms"),
    "lease_longer_than_stale": (8, "firmware.lease_ms", "longer than firmware.stale_ms"),
    "unsafe_grip_wiring": (11, "gpio.inputs.grip_left.active", "a hand on the left rail"),
    "estop_normally_open": (13, "gpio.inputs.estop.active", "normally-closed contacts"),
    "floating_key": (14, "gpio.inputs.safety_key.pull", "floating"),
    "duplicate_pin": (16, "gpio.inputs.stop.pin", "BCM 22 is already used by gpio.inputs.start"),
    "missing_section": (2, "firmware", "required key 'firmware' is missing"),
    "bad_id": (3, "treadmill.id", "got 'Treadmill 1'"),
    "start_above_max": (25, "stages[0].start_kmh", "up to the stage's max_kmh"),
    "accel_above_firmware": (32, "stages[1].accel_kmh_s", "firmware.max_accel_kmh_s"),
    "missing_stage_key": (29, "stages[1].grip", "required key 'grip' is missing"),
    "boolean_key": (37, "mqtt", "quote it"),
    "alias": (34, "stages[1].grip", "anchors and aliases"),
    "rate_not_whole_ms": (36, "control.rate_hz", "whole number of milliseconds"),
    "shutdown_too_short": (37, "control.shutdown_timeout_s", "at least 5 s"),
    "mock_socket_with_lgpio": (10, "gpio.mock_socket", "only with pin_factory: mock"),
    "stages_not_a_list": (22, "stages", "expected a list"),
    "training_unlock_unknown_stage": (42, "training.unlock[1]", "stage 3 is not in the stage"),
    "empty": (1, "(top level)", "the file is empty"),
}


def run_check(path: Path) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = check_config_main(path, out, err)
    return status, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_file_loads_and_passes_check_config(path: Path) -> None:
    status, out, err = run_check(path)
    assert status == 0, err
    assert f"{path}: OK" in out
    for name in (
        "assisted backward walk",
        "supported backward walk",
        "fast backward walk",
        "backward jog",
    ):
        assert name in out
    # The only acceptable warning is the production port that does not exist on this machine.
    assert all("serial.port" in line for line in err.splitlines()), err


def test_minimal_file_loads_with_defaults() -> None:
    config = load_config(HERE / "good" / "minimal.yaml")
    assert config.control.rate_hz == 50
    assert config.control.tick_ms == 20
    assert config.mqtt_client_id == "treadmill-tm-test"
    assert config.mqtt_topic_prefix == "treadmill/tm-test"
    assert config.serial.is_simulator
    assert config.safety() == SafetyConfig(
        stages=(
            StageConfig(1, "walk", 2.0, 0.5, 0.2, 3.6, 1, GripLossAction.STOP_LATCH, 300),
            StageConfig(2, "jog", 6.0, 1.0, 0.5, 3.6, 0, GripLossAction.NONE, 0),
        ),
        machine_max_kmh=8.0,
    )


def test_production_stage_table_matches_the_documented_defaults() -> None:
    """The default stage table of the domain notes (stages 1-4), field by field."""
    config = load_config(SHIPPED[0])
    got = [
        (
            s.number,
            s.max_kmh,
            s.accel_kmh_s,
            s.grip_hands_required,
            s.grip_grace_ms,
            s.on_grip_loss,
            s.clip_required,
        )
        for s in config.safety().stages
    ]
    assert got == [
        (1, 2.0, 0.2, 1, 300, GripLossAction.STOP_LATCH, True),
        (2, 3.5, 0.3, 1, 800, GripLossAction.STOP_LATCH, True),
        (3, 5.5, 0.4, 0, 1000, GripLossAction.WARN, True),
        (4, 8.0, 0.5, 0, 0, GripLossAction.NONE, True),
    ]
    safety = config.safety()
    assert safety.machine_max_kmh == 8.0
    assert safety.stop_decel_kmh_s == 3.6
    assert (safety.lease_ms, safety.stale_ms) == (300, 500)
    assert config.gpio.pin_factory == "lgpio"
    assert config.serial.port.startswith("/dev/serial/by-id/")


def test_demo_file_uses_simulator_mock_pins_and_same_limits() -> None:
    demo = load_config(SHIPPED[1])
    production = load_config(SHIPPED[0])
    assert demo.serial.is_simulator
    assert demo.gpio.pin_factory == "mock"
    assert demo.gpio.mock_socket is not None
    assert demo.safety() == production.safety()
    assert demo.gpio.inputs == production.gpio.inputs


def test_there_are_at_least_twelve_distinct_bad_files_and_each_is_in_the_table() -> None:
    on_disk = {path.stem for path in BAD.glob("*.yaml")}
    assert on_disk == set(BAD_FILES)
    assert len(on_disk) >= 12


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_file_is_refused_with_line_key_path_and_status_78(name: str) -> None:
    path = BAD / f"{name}.yaml"
    line, key_path, fragment = BAD_FILES[name]
    status, out, err = run_check(path)
    assert status == EXIT_CONFIG == 78
    assert out == ""
    problem_lines = [text for text in err.splitlines() if text.startswith(f"{path}:")]
    # One defect, one problem line, then the summary line.
    assert len(problem_lines) == 2, err
    first, summary_line = problem_lines
    prefix = f"{path}:{line}:"
    assert first.startswith(prefix), f"expected line {line}: {first}"
    assert f": {key_path}: " in first, first
    assert fragment in first, first
    assert "1 problem" in summary_line


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_load_config_raises_config_error_with_the_same_position(name: str) -> None:
    line, key_path, _ = BAD_FILES[name]
    with pytest.raises(ConfigError) as caught:
        load_config(BAD / f"{name}.yaml")
    (issue,) = caught.value.problems
    assert (issue.line, issue.key_path) == (line, key_path)
    assert issue.col >= 1
    assert issue.path == str(BAD / f"{name}.yaml")


def test_missing_file_is_refused_with_status_78(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    status, _, err = run_check(path)
    assert status == EXIT_CONFIG
    assert f"{path}: cannot read the configuration file: No such file or directory" in err


def test_several_problems_are_all_reported_in_file_order(tmp_path: Path) -> None:
    text = (HERE / "good" / "minimal.yaml").read_text()
    text = text.replace("  id: tm-test\n", "  id: TM\n").replace(
        "    max_kmh: 6.0\n", "    max_kmh: -1\n"
    )
    path = tmp_path / "two.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    lines = caught.value.lines()
    assert [issue.key_path for issue in caught.value.problems] == [
        "treadmill.id",
        "stages[1].max_kmh",
    ]
    assert lines[0].startswith(f"{path}:3:3: treadmill.id: ")
    assert lines[1].startswith(f"{path}:30:5: stages[1].max_kmh: must be more than 0")


def test_summary_lists_the_stage_table() -> None:
    status, out, _ = run_check(SHIPPED[1])
    assert status == 0
    row = next(line for line in out.splitlines() if "assisted backward walk" in line)
    assert row.split() == [
        "1",
        "assisted",
        "backward",
        "walk",
        "2.0",
        "0.5",
        "0.2",
        ">=1",
        "hand,",
        "stop_latch",
        "300",
        "yes",
    ]
    assert "in-process simulator" in out
    assert "ceiling 8.0 km/h" in out


def test_warnings_do_not_refuse_the_file(tmp_path: Path) -> None:
    text = (HERE / "good" / "minimal.yaml").read_text().replace('"sim://"', "/dev/ttyUSB7")
    path = tmp_path / "usb.yaml"
    path.write_text(text)
    report = load_config_report(path)
    assert isinstance(report.config, AppConfig)
    messages = [w.text() for w in report.warnings]
    assert any("/dev/serial/by-id/" in m and ":5:3: serial.port:" in m for m in messages)
    status, _, err = run_check(path)
    assert status == 0
    assert "(warning)" in err
