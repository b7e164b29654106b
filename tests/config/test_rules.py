"""Rules across keys: fail-safe wiring, firmware ceilings, the SafetyConfig mapping, MQTT files."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from controller.rules.model import SafetyConfig, StageConfig
from controller.settings.checks import yaml_key_path, yaml_words
from controller.settings.config import ConfigError, load_config_text, load_config_text_report
from controller.settings.credentials import MqttCredentials, read_mqtt_credentials
from controller.settings.schema import SAFETY_TO_YAML, STAGE_TO_YAML, AppConfig

MINIMAL = (Path(__file__).resolve().parent / "good" / "minimal.yaml").read_text()

# What a broken wire (open circuit) must read as, per input; written out independently of
# the implementation. "either": the input can only make things safer, any polarity is fine.
OPEN_CIRCUIT_MUST_READ = {
    "grip_left": "inactive",  # not gripping
    "grip_right": "inactive",
    "estop": "active",  # pressed (normally-closed contacts)
    "safety_key": "inactive",  # active = key in place, so open must read "removed"
    "start": "inactive",
    "stop": "either",
    "faster": "inactive",
    "slower": "either",
    "stage_up": "inactive",
    "stage_down": "either",
    "reset": "inactive",
    "trainer_key": "inactive",
}


def with_input(name: str, active: str, pull: str, text: str = MINIMAL) -> str:
    """MINIMAL with input ``name`` rewired (trainer_key, absent there, is added on BCM 26)."""
    pattern = re.compile(rf"^    {name}:.*$", re.MULTILINE)
    match = pattern.search(text)
    if match is None:
        reset = re.search(r"^    reset:.*$", text, re.MULTILINE)
        assert reset is not None
        line = f"\n    {name}: {{pin: 26, active: {active}, pull: {pull}}}"
        return text[: reset.end()] + line + text[reset.end() :]
    pin = re.search(r"pin: (\d+)", match.group(0))
    assert pin is not None
    line = f"    {name}: {{pin: {pin.group(1)}, active: {active}, pull: {pull}}}"
    return text[: match.start()] + line + text[match.end() :]


def problems(text: str) -> list[tuple[str, str]]:
    try:
        load_config_text(text, "t.yaml")
    except ConfigError as exc:
        return [(issue.key_path, issue.message) for issue in exc.problems]
    return []


@pytest.mark.parametrize("name", sorted(OPEN_CIRCUIT_MUST_READ))
@pytest.mark.parametrize("active", ["high", "low"])
@pytest.mark.parametrize("pull", ["up", "down", "none"])
def test_wiring_matrix(name: str, active: str, pull: str) -> None:
    found = problems(with_input(name, active, pull))
    if pull == "none":
        assert found == [(f"gpio.inputs.{name}.pull", found[0][1])]
        assert "floating" in found[0][1]
        return
    open_reads_active = (pull == "up") == (active == "high")
    rule = OPEN_CIRCUIT_MUST_READ[name]
    refused = (rule == "inactive" and open_reads_active) or (
        rule == "active" and not open_reads_active
    )
    if refused:
        assert len(found) == 1, found
        key_path, message = found[0]
        assert key_path == f"gpio.inputs.{name}.active"
        assert message.startswith("unsafe wiring")
    else:
        assert found == []


def test_wiring_message_explains_the_fix() -> None:
    (found,) = problems(with_input("safety_key", "high", "up"))
    assert found[1] == (
        "unsafe wiring: with pull: up a broken wire reads high, which is active: high (in "
        "place), so a broken wire would look like the safety key in place. Wire the contact "
        "so that in place drives the pin low and set active: low"
    )


@pytest.mark.parametrize("pin", [0, 1])
def test_id_eeprom_pins_are_refused(pin: int) -> None:
    text = MINIMAL.replace(
        "{pin: 16, active: low,  pull: up}", f"{{pin: {pin}, active: low, pull: up}}"
    )
    assert problems(text) == [
        (
            "gpio.inputs.reset.pin",
            f"BCM {pin} is reserved for the HAT ID EEPROM (ID_SD/ID_SC): choose another pin",
        )
    ]


def test_uart_pins_are_refused_only_when_the_pi_uart_is_the_serial_port() -> None:
    text = MINIMAL.replace("{pin: 16, active: low,  pull: up}", "{pin: 14, active: low, pull: up}")
    assert problems(text) == []
    uart = text.replace('"sim://"', "/dev/serial0")
    ((key_path, message),) = problems(uart)
    assert key_path == "gpio.inputs.reset.pin"
    assert "UART TXD used by serial.port /dev/serial0" in message


def test_pin_outside_the_header_is_refused_with_range() -> None:
    text = MINIMAL.replace("{pin: 16, active: low,  pull: up}", "{pin: 40, active: low, pull: up}")
    assert problems(text) == [("gpio.inputs.reset.pin", "must be from 0 to 27; got 40")]


def test_trainer_key_required_when_training_uses_it() -> None:
    text = MINIMAL.replace("training:\n  enabled: false\n", "training:\n  enabled: true\n")
    text = text.replace("  - name: jog", "  - name: jog2").replace(
        "mqtt:\n",
        "\n".join(
            f"  - {{name: s{n}, max_kmh: 6.0, start_kmh: 1.0, accel_kmh_s: 0.5, "
            "decel_kmh_s: 3.6, grip: {hands_required: 0, on_loss: none}}"
            for n in (3, 4)
        )
        + "\nmqtt:\n",
    )
    ((key_path, message),) = problems(text)
    assert key_path == "gpio.inputs.trainer_key"
    assert "training.trainer.input: buttons" in message
    assert problems(with_input("trainer_key", "low", "up", text)) == []


def test_stop_decel_above_the_firmware_ceiling_is_refused() -> None:
    text = MINIMAL.replace(
        "  max_speed_kmh: 8.0\n", "  max_speed_kmh: 8.0\n  max_decel_kmh_s: 3.0\n"
    )
    found = problems(text)
    assert [key for key, _ in found] == [
        "control.stop_decel_kmh_s",
        "stages[0].decel_kmh_s",
        "stages[1].decel_kmh_s",
    ]
    assert "firmware.max_decel_kmh_s = 3 km/h/s" in found[0][1]


def test_lease_shorter_than_three_ticks_is_refused() -> None:
    text = MINIMAL.replace("  max_speed_kmh: 8.0\n", "  max_speed_kmh: 8.0\n  lease_ms: 50\n")
    text = text.replace("mqtt:\n", "control:\n  rate_hz: 25\nmqtt:\n")
    assert problems(text) == [
        (
            "firmware.lease_ms",
            "50 ms is shorter than 3 control ticks (120 ms at 25 Hz): one late tick would stop "
            "the belt; use at least 120 ms",
        )
    ]


def test_firmware_limits_must_fit_the_wire_resolution() -> None:
    text = MINIMAL.replace("  max_speed_kmh: 8.0\n", "  max_speed_kmh: 7.995\n")
    ((key_path, message),) = problems(text)
    assert key_path == "firmware.max_speed_kmh"
    assert "multiple of 0.01" in message


@pytest.mark.parametrize(
    ("old", "new", "key_path", "fragment"),
    [
        ("  max_speed_kmh: 8.0\n", "  max_speed_kmh: .nan\n", "firmware.max_speed_kmh", "finite"),
        ("  max_speed_kmh: 8.0\n", "  max_speed_kmh: .inf\n", "firmware.max_speed_kmh", "finite"),
        ("  max_speed_kmh: 8.0\n", '  max_speed_kmh: "8"\n', "firmware.max_speed_kmh", "number"),
        ("  enabled: false\nt", "  enabled: 0\nt", "mqtt.enabled", "valid boolean"),
        ("grace_ms: 300}", "grace_ms: 300.0}", "stages[0].grip.grace_ms", "valid integer"),
        ("grace_ms: 300}", "grace_ms: true}", "stages[0].grip.grace_ms", "valid integer"),
        ("on_loss: none}", "on_loss: stop}", "stages[1].grip.on_loss", "'stop_latch'"),
        ("  pin_factory: mock\n", "  pin_factory: rpigpio\n", "gpio.pin_factory", "'lgpio'"),
        ('  port: "sim://"\n', "  port: ttyUSB0\n", "serial.port", "absolute path"),
        ('  port: "sim://"\n', '  port: "sim://"\n  baud: 14400\n', "serial.baud", "115200"),
    ],
)
def test_strict_types_and_values(old: str, new: str, key_path: str, fragment: str) -> None:
    assert MINIMAL.count(old) == 1
    ((found_path, message),) = problems(MINIMAL.replace(old, new))
    assert found_path == key_path
    assert fragment in message


def test_app_config_is_frozen_and_builds_the_safety_config() -> None:
    config = load_config_text(MINIMAL)
    with pytest.raises(ValidationError):
        config.control.rate_hz = 100  # frozen: the assignment must fail
    safety = config.safety()
    assert isinstance(safety, SafetyConfig)
    assert safety.stages[1].number == 2


def test_every_safety_config_field_has_a_yaml_home() -> None:
    """One table maps SafetyConfig to YAML; a new field must be added to it (or excluded)."""
    fields = {f.name for f in dataclasses.fields(SafetyConfig)}
    assert set(SAFETY_TO_YAML) == fields
    assert set(STAGE_TO_YAML) == {f.name for f in dataclasses.fields(StageConfig)}


def test_every_yaml_home_exists_in_the_schema() -> None:
    config = load_config_text(MINIMAL)
    for path in SAFETY_TO_YAML.values():
        node: object = config
        for part in path:
            node = getattr(node, str(part))
    for path in STAGE_TO_YAML.values():
        node = config.stages[0]
        for part in path:
            node = getattr(node, str(part))


def test_safety_values_come_from_their_yaml_keys() -> None:
    """Changing each YAML key changes exactly the SafetyConfig field the table names."""
    base = load_config_text(MINIMAL).safety()
    edits = {
        "stop_decel_kmh_s": ("control:\n  stop_decel_kmh_s: 3.0\n", 3.0),
        "standstill_kmh": ("control:\n  standstill_kmh: 0.2\n", 0.2),
        "overspeed_ms": ("control:\n  overspeed: {duration_ms: 700}\n", 700),
        "follow_lag_ms": ("control:\n  follow: {lag_ms: 400}\n", 400),
        "max_grip_grace_ms": ("grip_sensor:\n  max_grace_ms: 1500\n", 1500),
        "grip_stuck_window_ms": ("grip_sensor:\n  stuck_window_ms: 60000\n", 60000),
    }
    for field, (section, value) in edits.items():
        safety = load_config_text(MINIMAL.replace("mqtt:\n", section + "mqtt:\n")).safety()
        assert getattr(safety, field) == value
        assert dataclasses.replace(safety, **{field: getattr(base, field)}) == base


@pytest.mark.parametrize(
    ("safety_path", "yaml_path"),
    [
        ("lease_ms", ("firmware", "lease_ms")),
        ("machine_max_kmh", ("firmware", "max_speed_kmh")),
        ("overspeed_rel", ("control", "overspeed", "rel")),
        ("stages", ("stages",)),
        ("stages[2].max_kmh", ("stages", 2, "max_kmh")),
        ("stages[0].grip_grace_ms", ("stages", 0, "grip", "grace_ms")),
        ("stages[1].on_grip_loss", ("stages", 1, "grip", "on_loss")),
        ("stages[1].number", ("stages", 1)),
        ("firmware.lease_ms", ("firmware", "lease_ms")),
        ("control.rate_hz", ("control", "rate_hz")),
    ],
)
def test_yaml_key_path(safety_path: str, yaml_path: tuple[str | int, ...]) -> None:
    assert yaml_key_path(safety_path) == yaml_path


def test_yaml_words_rewrites_field_names_in_messages() -> None:
    assert yaml_words("up to machine_max_kmh; make lease_ms at most stale_ms") == (
        "up to firmware.max_speed_kmh; make firmware.lease_ms at most firmware.stale_ms"
    )
    assert yaml_words("with on_grip_loss slow, grip_slow_kmh") == (
        "with grip.on_loss slow, grip.slow_to_kmh"
    )
    assert yaml_words("firmware.lease_ms stays") == "firmware.lease_ms stays"


# ------------------------------------------------------------------------------------ MQTT


def mqtt_text(lines: str) -> str:
    return MINIMAL.replace("mqtt:\n  enabled: false\n", "mqtt:\n  enabled: true\n" + lines)


def test_credentials_file_is_read_and_checked(tmp_path: Path) -> None:
    secret = tmp_path / "mqtt-credentials"
    secret.write_text("treadmill:pa:ss\n")
    secret.chmod(0o600)
    report = load_config_text_report(mqtt_text(f"  credentials_file: {secret}\n"))
    assert report.warnings == ()
    credentials = read_mqtt_credentials(secret)
    assert credentials == MqttCredentials("treadmill", "pa:ss")
    assert "pa:ss" not in repr(credentials)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_credentials_open_to_other_users_give_a_warning(tmp_path: Path, mode: int) -> None:
    secret = tmp_path / "mqtt-credentials"
    secret.write_text("treadmill:secret\n")
    secret.chmod(mode)
    report = load_config_text_report(mqtt_text(f"  credentials_file: {secret}\n"), "t.yaml")
    (warning,) = report.warnings
    assert warning.key_path == "mqtt.credentials_file"
    assert warning.line == 37
    assert "chmod 600" in warning.message


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("", "found 0 non-empty lines"),
        ("justaname\n", "no ':'"),
        ("a:b\nc:d\n", "found 2 non-empty lines"),
        (":s3cret\n", "username is empty"),
        (" user:s3cret\n", "spaces around it"),
        ("a:s3cret\nb:s3cret\n", "found 2 non-empty lines"),
        ("user:\n", "password after ':' is empty"),
    ],
)
def test_malformed_credentials_are_refused(tmp_path: Path, content: str, fragment: str) -> None:
    secret = tmp_path / "mqtt-credentials"
    secret.write_text(content)
    secret.chmod(0o600)
    ((key_path, message),) = problems(mqtt_text(f"  credentials_file: {secret}\n"))
    assert key_path == "mqtt.credentials_file"
    assert fragment in message
    assert "s3cret" not in message  # never quote the password


def test_non_utf8_credentials_are_refused(tmp_path: Path) -> None:
    secret = tmp_path / "mqtt-credentials"
    secret.write_bytes(b"us\xe9r:pw\n")
    secret.chmod(0o600)
    ((key_path, message),) = problems(mqtt_text(f"  credentials_file: {secret}\n"))
    assert key_path == "mqtt.credentials_file"
    assert "is not UTF-8 text" in message


def test_missing_files_are_refused_only_when_mqtt_is_enabled(tmp_path: Path) -> None:
    absent = tmp_path / "absent"
    text = mqtt_text(f"  credentials_file: {absent}\n  tls: {{ca_file: {absent}}}\n")
    found = problems(text)
    assert sorted(key for key, _ in found) == ["mqtt.credentials_file", "mqtt.tls.ca_file"]
    assert all("No such file or directory" in message for _, message in found)
    disabled = text.replace(
        "  enabled: true\n  credentials_file", "  enabled: false\n  credentials_file"
    )
    assert problems(disabled) == []


def test_client_certificate_needs_both_files(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    cert = tmp_path / "cert.pem"
    cert.write_text("x")
    text = mqtt_text(f"  tls: {{ca_file: {ca}, cert_file: {cert}}}\n")
    assert problems(text) == [
        (
            "mqtt.tls.key_file",
            "a client certificate needs both cert_file and key_file; set key_file or remove "
            "the other",
        )
    ]


@pytest.mark.parametrize(
    ("prefix", "ok"),
    [
        ("treadmill/{id}", True),
        ("gym/floor-2/{id}", True),
        ("treadmill/#", False),
        ("treadmill/+/x", False),
        ("/treadmill", False),
        ("treadmill/", False),
        ("a//b", False),
        ("", False),
    ],
)
def test_topic_prefix_validation(prefix: str, ok: bool) -> None:
    found = problems(mqtt_text(f'  topic_prefix: "{prefix}"\n'))
    if ok:
        assert found == []
    else:
        ((key_path, message),) = found
        assert key_path == "mqtt.topic_prefix"
        assert "no wildcards" in message


def test_topic_prefix_and_client_id_resolve() -> None:
    config = load_config_text(mqtt_text('  topic_prefix: "gym/{id}"\n  client_id: tm-a\n'))
    assert config.mqtt_topic_prefix == "gym/tm-test"
    assert config.mqtt_client_id == "tm-a"
    assert isinstance(config, AppConfig)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_credentials_are_refused(tmp_path: Path) -> None:
    secret = tmp_path / "mqtt-credentials"
    secret.write_text("a:b\n")
    secret.chmod(0o000)
    ((key_path, message),) = problems(mqtt_text(f"  credentials_file: {secret}\n"))
    assert key_path == "mqtt.credentials_file"
    assert "Permission denied" in message


# -------------------------------------------------------------------------------- training


@pytest.mark.parametrize(
    ("section", "key_path", "message"),
    [
        (
            "  trainer: {hold_ms: 50}\n",
            "training.trainer.hold_ms",
            "must be from 1000 to 10000; got 50",
        ),
        (
            "  session_length_min: {x: 5}\n",
            "training.session_length_min.x",
            "'x' is not a valid key here: use a number",
        ),
        (
            "  unknown_thing: 1\n",
            "training.unknown_thing",
            "unknown key 'unknown_thing'",
        ),
    ],
)
def test_training_section_errors_are_placed(section: str, key_path: str, message: str) -> None:
    text = MINIMAL.replace(
        "training:\n  enabled: false\n", "training:\n  enabled: false\n" + section
    )
    ((found_path, found_message),) = problems(text)
    assert found_path == key_path
    assert found_message.startswith(message)


def test_commented_training_example_in_the_shipped_file_is_valid() -> None:
    """Uncommenting the documented ``training:`` example must give a valid file."""
    shipped = (Path(__file__).resolve().parents[2] / "config" / "treadmill.yaml").read_text()
    head, _, example = shipped.partition("\n# training:\n")
    assert example, "the commented training example is missing"
    block = "training:\n" + "".join(
        line[2:] + "\n" for line in example.splitlines() if line.startswith("# ")
    )
    config = load_config_text(head + "\n" + block, "treadmill.yaml")
    assert config.training.trainer.input == "trainer_key"
    assert [rule.stage for rule in config.training.unlock] == [2, 3, 4]


def test_an_absurdly_long_port_path_is_a_warning_not_a_crash() -> None:
    text = MINIMAL.replace('"sim://"', "/" + "a" * 5000)
    report = load_config_text_report(text, "t.yaml")
    assert any("does not exist" in w.message for w in report.warnings)
