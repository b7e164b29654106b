"""Mock pins with a simulator in another process: what cannot reach the service is refused.

``treadmill sim`` (and ``--avr``, ``--native``) runs our firmware in another process and
hands the service a pseudo-terminal. The Pi's belt sensor pulses and the console-driven
treadmill of key-relay mode exist only in the service's own process (``serial.port:
sim://``): such a config is refused at load with the key, the line and what to do, instead
of a sensor that reads 0 while the belt moves.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from controller.cli import main
from controller.settings.config import ConfigError, load_config_text
from controller.tools.demo import demo_config

REPO = Path(__file__).resolve().parents[2]
DEMO = (REPO / "config" / "demo.yaml").read_text(encoding="utf-8")
MONITOR = (REPO / "config" / "monitor-demo.yaml").read_text(encoding="utf-8")
PTY = "/dev/pts/7"


def _with_port(text: str, port: str) -> str:
    return re.sub(r'(?m)^  port: "sim://".*$', f'  port: "{port}"', text, count=1)


def _issues(text: str) -> list[tuple[str, str]]:
    try:
        load_config_text(text, "t.yaml")
    except ConfigError as exc:
        return [(issue.key_path, issue.message) for issue in exc.problems]
    return []


def test_SR_CHAN_1_belt_sensor_on_mock_pins_with_an_external_simulator_is_refused() -> None:
    issues = _issues(_with_port(DEMO, PTY))
    assert len(issues) == 1, issues
    key, message = issues[0]
    assert key == "belt_sensor"
    assert PTY in message
    assert "Remove the belt_sensor section" in message
    assert 'serial.port: "sim://"' in message


def test_external_simulator_without_belt_sensor_is_accepted() -> None:
    raw = yaml.safe_load(_with_port(DEMO, PTY))
    raw.pop("belt_sensor")
    assert _issues(yaml.safe_dump(raw)) == []
    assert _issues(DEMO) == []  # sim:// with the sensor: the in-process simulator drives it


def test_real_pins_with_a_serial_port_and_a_belt_sensor_are_accepted() -> None:
    text = _with_port(DEMO, "/dev/serial/by-id/usb-arduino")
    text = text.replace("pin_factory: mock", "pin_factory: lgpio")
    text = re.sub(r"(?m)^  mock_socket: .*$", "  mock_socket: null", text)
    assert _issues(text) == []


def test_SR_MON_key_relay_on_mock_pins_needs_the_in_process_console() -> None:
    issues = _issues(_with_port(MONITOR, PTY))
    assert [key for key, _ in issues] == ["serial.port"]
    assert "key-relay mode on mock pins" in issues[0][1]
    assert _issues(MONITOR) == []


def test_treadmill_run_with_such_a_config_exits_78_with_the_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "external.yaml"
    path.write_text(_with_port(DEMO, PTY), encoding="utf-8")
    assert main(["run", "--config", str(path)]) == 78
    err = capsys.readouterr().err
    assert re.search(rf"{re.escape(str(path))}:\d+:\d+: belt_sensor: the Pi's belt sensor", err)


def test_demo_with_an_external_runner_drops_the_belt_sensor(tmp_path: Path) -> None:
    base = load_config_text(DEMO, "demo.yaml")
    assert base.belt_sensor is not None
    external = demo_config(base, state_dir=tmp_path, broker=None, training=False, port=PTY)
    assert external.belt_sensor is None
    assert external.safety().second_channel is None
    in_process = demo_config(base, state_dir=tmp_path, broker=None, training=False)
    assert in_process.belt_sensor is not None
