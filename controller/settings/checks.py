"""Checks across keys that the schema cannot express (wiring, firmware ceilings, MQTT files,
training, the safety rules), with each problem placed at its YAML key.
"""

from __future__ import annotations

import math
import re
import stat
from pathlib import Path

from controller.rules.config_rules import (
    check_safety_config,
)
from controller.settings.bounds import number_text as _number
from controller.settings.credentials import read_mqtt_credentials
from controller.settings.schema import (
    PI_UART_PORTS,
    SAFETY_TO_YAML,
    SIM_PORT,
    STAGE_TO_YAML,
    AppConfig,
)
from controller.settings.yaml_loader import (
    KeyPart,
    KeyPath,
    format_key_path,
)
from controller.training.config import check_against_stages

#: Where each :class:`~controller.rules.model.ChannelConfig` field is written under ``belt_sensor``.
CHANNEL_TO_YAML: dict[str, KeyPath] = {
    "agree_abs_kmh": ("agree", "abs_kmh"),
    "agree_rel": ("agree", "rel"),
    "agree_lag_ms": ("agree", "lag_ms"),
    "disagree_ms": ("agree", "duration_ms"),
    "distance_per_pulse_mm": ("distance_per_pulse_mm",),
    "debounce_ms": ("debounce_ms",),
    "stale_ms": ("stale_ms",),
}


_PATH_PART = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]")


def _split_key_path(text: str) -> KeyPath:
    parts: list[KeyPart] = []
    for match in _PATH_PART.finditer(text):
        name, index = match.groups()
        parts.append(int(index) if index is not None else name)
    return tuple(parts)


def yaml_key_path(safety_key_path: str) -> KeyPath:
    """Map a key path of :class:`SafetyConfig` (``"stages[2].grip_grace_ms"``,
    ``"lease_ms"``) to where it is written in the YAML (``("stages", 2, "grip", "grace_ms")``,
    ``("firmware", "lease_ms")``). A path that already names YAML keys is returned as is.
    """
    parts = _split_key_path(safety_key_path)
    if not parts:
        return ()
    head = parts[0]
    if head == "stages" and len(parts) >= 2 and isinstance(parts[1], int):
        rest = parts[2:]
        if rest and isinstance(rest[0], str) and rest[0] in STAGE_TO_YAML:
            return ("stages", parts[1], *STAGE_TO_YAML[rest[0]], *rest[1:])
        return parts
    if head == "second_channel" and len(parts) == 2 and parts[1] in CHANNEL_TO_YAML:
        return ("belt_sensor", *CHANNEL_TO_YAML[str(parts[1])])
    if isinstance(head, str) and head in SAFETY_TO_YAML:
        return (*SAFETY_TO_YAML[head], *parts[1:])
    return parts


#: Inputs whose open circuit must read *not asserted*: a broken wire must never look like a
#: hand on a rail, a key in place, or a press that starts, speeds up or resets.
OPEN_READS_INACTIVE: tuple[str, ...] = (
    "grip_left",
    "grip_right",
    "safety_key",
    "start",
    "faster",
    "stage_up",
    "reset",
    "trainer_key",
)


#: Inputs whose open circuit must read *asserted* (normally-closed contacts).
OPEN_READS_ACTIVE: tuple[str, ...] = ("estop",)


_INPUT_MEANING = {
    "grip_left": ("a hand on the left rail", "gripping"),
    "grip_right": ("a hand on the right rail", "gripping"),
    "estop": ("the e-stop pressed", "pressed"),
    "safety_key": ("the safety key in place", "in place"),
    "start": ("a START press", "pressed"),
    "stop": ("a STOP press", "pressed"),
    "faster": ("a FASTER press", "pressed"),
    "slower": ("a SLOWER press", "pressed"),
    "stage_up": ("a STAGE UP press", "pressed"),
    "stage_down": ("a STAGE DOWN press", "pressed"),
    "reset": ("a RESET press", "pressed"),
    "trainer_key": ("the trainer key turned on", "on"),
}


Problem = tuple[KeyPath, str]


def _wiring_problems(config: AppConfig) -> list[Problem]:
    problems: list[Problem] = []
    used: dict[int, str] = {}
    uart = config.serial.port in PI_UART_PORTS
    for name, wiring in config.gpio.inputs.items():
        where: KeyPath = ("gpio", "inputs", name)
        asserted, state = _INPUT_MEANING[name]
        open_level = {"up": "high", "down": "low"}.get(wiring.pull)
        if wiring.pull == "none":
            problems.append(
                (
                    (*where, "pull"),
                    f"pull: none leaves the pin floating when a wire breaks, so a broken wire "
                    f"could read as {asserted} or not; use pull: up or pull: down so that an "
                    "open circuit has a defined level",
                )
            )
        elif name in OPEN_READS_INACTIVE and wiring.open_circuit_reads_active():
            other = "low" if wiring.active == "high" else "high"
            problems.append(
                (
                    (*where, "active"),
                    f"unsafe wiring: with pull: {wiring.pull} a broken wire reads "
                    f"{open_level}, which is active: {wiring.active} ({state}), so a broken "
                    f"wire would look like {asserted}. Wire the contact so that {state} drives "
                    f"the pin {other} and set active: {other}",
                )
            )
        elif name in OPEN_READS_ACTIVE and not wiring.open_circuit_reads_active():
            problems.append(
                (
                    (*where, "active"),
                    f"unsafe wiring: the e-stop must use normally-closed contacts, so that a "
                    f"broken wire reads as pressed. With pull: {wiring.pull} an open circuit "
                    f"reads {open_level}, but active: {wiring.active} says pressed is "
                    f"{wiring.active}. Wire the normally-closed contact to "
                    f"{'ground' if wiring.pull == 'up' else '3.3 V'} and set active: "
                    f"{open_level}",
                )
            )
        if wiring.pin in used:
            problems.append(
                (
                    (*where, "pin"),
                    f"BCM {wiring.pin} is already used by gpio.inputs.{used[wiring.pin]}: "
                    "each input needs its own pin",
                )
            )
        else:
            used[wiring.pin] = name
        if wiring.pin in (0, 1):
            problems.append(
                (
                    (*where, "pin"),
                    f"BCM {wiring.pin} is reserved for the HAT ID EEPROM (ID_SD/ID_SC): "
                    "choose another pin",
                )
            )
        if uart and wiring.pin in (14, 15):
            problems.append(
                (
                    (*where, "pin"),
                    f"BCM {wiring.pin} is the UART {'TXD' if wiring.pin == 14 else 'RXD'} "
                    f"used by serial.port {config.serial.port}: choose another pin",
                )
            )
    sensor = config.belt_sensor
    if sensor is not None:
        where = ("belt_sensor", "pin")
        if sensor.pin in used:
            problems.append(
                (
                    where,
                    f"BCM {sensor.pin} is already used by gpio.inputs.{used[sensor.pin]}: the "
                    "belt sensor needs its own pin",
                )
            )
        if uart and sensor.pin in (14, 15):
            problems.append(
                (where, f"BCM {sensor.pin} is the UART used by serial.port: choose another pin")
            )
    drive = config.drive
    if drive.mode == "key_relay" and drive.key_relay is None:
        problems.append(
            (
                ("drive", "mode"),
                "mode: key_relay needs a drive.key_relay section with the relay output pin "
                "(docs/install.md)",
            )
        )
    if drive.mode != "key_relay" and drive.key_relay is not None:
        problems.append(
            (("drive", "key_relay"), "drive.key_relay works only with drive.mode: key_relay")
        )
    relay = drive.key_relay
    if relay is not None:
        where = ("drive", "key_relay", "pin")
        owner = used.get(relay.pin)
        if owner is None and sensor is not None and sensor.pin == relay.pin:
            owner = "belt_sensor"
        if owner is not None:
            problems.append(
                (where, f"BCM {relay.pin} is already used by {owner}: the relay needs its own pin")
            )
        least_ms = 3 * config.control.tick_ms
        if relay.hold_off_ms < least_ms:
            problems.append(
                (
                    ("drive", "key_relay", "hold_off_ms"),
                    f"hold-off {relay.hold_off_ms} ms is less than 3 control ticks "
                    f"({least_ms} ms at {config.control.rate_hz} Hz): one late tick would drop "
                    "the relay. Build the relay circuit with a longer hold-off",
                )
            )
    _check_simulator_out_of_process(config, problems)
    if config.gpio.mock_socket is not None and config.gpio.pin_factory != "mock":
        problems.append(
            (
                ("gpio", "mock_socket"),
                "mock_socket works only with pin_factory: mock; remove it for real pins",
            )
        )
    return problems


def _firmware_problems(config: AppConfig) -> list[Problem]:
    problems: list[Problem] = []
    firmware = config.firmware
    control = config.control
    for index, stage in enumerate(config.stages):
        if stage.accel_kmh_s > firmware.max_accel_kmh_s:
            problems.append(
                (
                    ("stages", index, "accel_kmh_s"),
                    f"stage {index + 1} accelerates at {_number(stage.accel_kmh_s)} km/h/s, "
                    f"above the firmware ceiling firmware.max_accel_kmh_s = "
                    f"{_number(firmware.max_accel_kmh_s)} km/h/s: the firmware would refuse it",
                )
            )
        if stage.decel_kmh_s > firmware.max_decel_kmh_s:
            problems.append(
                (
                    ("stages", index, "decel_kmh_s"),
                    f"stage {index + 1} decelerates at {_number(stage.decel_kmh_s)} km/h/s, "
                    f"above the firmware ceiling firmware.max_decel_kmh_s = "
                    f"{_number(firmware.max_decel_kmh_s)} km/h/s",
                )
            )
    if control.stop_decel_kmh_s > firmware.max_decel_kmh_s:
        problems.append(
            (
                ("control", "stop_decel_kmh_s"),
                f"{_number(control.stop_decel_kmh_s)} km/h/s is above the firmware ceiling "
                f"firmware.max_decel_kmh_s = {_number(firmware.max_decel_kmh_s)} km/h/s",
            )
        )
    min_lease_ms = 3 * control.tick_ms
    if firmware.lease_ms < min_lease_ms:
        problems.append(
            (
                ("firmware", "lease_ms"),
                f"{firmware.lease_ms} ms is shorter than 3 control ticks ({min_lease_ms} ms at "
                f"{control.rate_hz} Hz): one late tick would stop the belt; use at least "
                f"{min_lease_ms} ms",
            )
        )
    stop_s = firmware.max_speed_kmh / min(control.stop_decel_kmh_s, firmware.max_decel_kmh_s)
    needed_s = math.ceil(stop_s + 1.0)
    if control.shutdown_timeout_s < needed_s:
        problems.append(
            (
                ("control", "shutdown_timeout_s"),
                f"a stop from {_number(firmware.max_speed_kmh)} km/h takes {stop_s:.1f} s: "
                f"the shutdown must wait at least {needed_s} s for the belt to stand still",
            )
        )
    return problems


def _mqtt_problems(config: AppConfig) -> tuple[list[Problem], list[Problem]]:
    """(errors, warnings) about the MQTT files; nothing is checked when MQTT is off."""
    errors: list[Problem] = []
    warnings: list[Problem] = []
    mqtt = config.mqtt
    if not mqtt.enabled:
        return errors, warnings
    if mqtt.tls is not None:
        tls = mqtt.tls
        if (tls.cert_file is None) != (tls.key_file is None):
            missing = "key_file" if tls.key_file is None else "cert_file"
            errors.append(
                (
                    ("mqtt", "tls", missing),
                    "a client certificate needs both cert_file and key_file; set "
                    f"{missing} or remove the other",
                )
            )
        for key in ("ca_file", "cert_file", "key_file"):
            value = getattr(tls, key)
            if value is not None:
                problem = _unreadable(Path(value))
                if problem:
                    errors.append((("mqtt", "tls", key), problem))
    if mqtt.credentials_file is not None:
        where: KeyPath = ("mqtt", "credentials_file")
        path = Path(mqtt.credentials_file)
        problem = _unreadable(path)
        if problem:
            errors.append((where, problem))
        else:
            try:
                read_mqtt_credentials(path)
            except ValueError as exc:
                errors.append((where, str(exc)))
            try:
                mode = path.stat().st_mode
            except OSError:  # removed since it was read: the read above already passed
                mode = 0
            if mode & (stat.S_IRWXG | stat.S_IRWXO):
                warnings.append(
                    (
                        where,
                        f"{path} is open to other users (mode {stat.S_IMODE(mode):04o}): run "
                        f"'chown treadmill:treadmill {path}' and 'chmod 600 {path}'",
                    )
                )
    return errors, warnings


def _unreadable(path: Path) -> str | None:
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror or type(exc).__name__}"
    return None


def _training_problems(config: AppConfig) -> list[Problem]:
    problems: list[Problem] = []
    training = config.training
    if (
        training.enabled
        and training.trainer.input == "trainer_key"
        and config.gpio.inputs.trainer_key is None
    ):
        problems.append(
            (
                ("gpio", "inputs", "trainer_key"),
                "the training program confirms stage unlocks with the trainer key "
                "(training.trainer.input: trainer_key, the default), but gpio.inputs has no "
                "trainer_key: wire a key switch and add it here, or set "
                "training.trainer.input: buttons",
            )
        )
    if not training.enabled:
        return problems
    for message in check_against_stages(training, config.stage_configs()):
        match = re.match(r"(unlock)\[(\d+)\]: |(session_length_min): ", message)
        if match is None:
            problems.append((("training", "unlock"), message))
        elif match.group(1):
            problems.append((("training", "unlock", int(match.group(2))), message[match.end() :]))
        else:
            problems.append((("training", "session_length_min"), message[match.end() :]))
    return problems


_SAFETY_WORDS = re.compile(
    r"(?<![\w.])("
    + "|".join(
        sorted(
            (name for name in {**SAFETY_TO_YAML, **STAGE_TO_YAML} if "_" in name),
            key=len,
            reverse=True,
        )
    )
    + r")\b"
)


def yaml_words(message: str) -> str:
    """Rewrite :class:`SafetyConfig` field names in ``message`` as the YAML keys a user edits:
    ``"up to machine_max_kmh"`` -> ``"up to firmware.max_speed_kmh"``."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in SAFETY_TO_YAML:
            return format_key_path(SAFETY_TO_YAML[name])
        return format_key_path(STAGE_TO_YAML[name])

    return _SAFETY_WORDS.sub(replace, message)


def _safety_rule_problems(config: AppConfig) -> list[Problem]:
    return [
        (yaml_key_path(problem.key_path), yaml_words(problem.message))
        for problem in check_safety_config(config.safety())
    ]


def _advice(config: AppConfig) -> list[Problem]:
    """Things that work but are unwise."""
    advice: list[Problem] = []
    port = config.serial.port
    if port.startswith(("/dev/ttyUSB", "/dev/ttyACM")):
        advice.append(
            (
                ("serial", "port"),
                f"{port} may get another number after a reboot or replug; use the stable "
                "name under /dev/serial/by-id/ (ls -l /dev/serial/by-id/)",
            )
        )
    if not config.serial.is_simulator and not _exists(Path(port)):
        advice.append(
            (
                ("serial", "port"),
                f"{port} does not exist on this machine now: is the motor controller plugged "
                "in? (ls -l /dev/serial/by-id/)",
            )
        )
    pseudo_terminal = port.startswith("/dev/pts/")  # a simulator on a pty, as in the tests
    if config.gpio.pin_factory == "mock" and not (config.serial.is_simulator or pseudo_terminal):
        advice.append(
            (
                ("gpio", "pin_factory"),
                "mock pins with a real serial port: the grips, e-stop and key are not read "
                "from the machine",
            )
        )
    return advice


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # e.g. ENAMETOOLONG: not a device that exists
        return False


def _check_simulator_out_of_process(config: AppConfig, problems: list[Problem]) -> None:
    """Mock pins with a simulator in another process (``treadmill sim``, ``--avr``,
    ``--native``, given as a serial port path): the simulated inputs that only an
    in-process simulator can drive are refused, rather than left silent.

    * The Pi's belt sensor: its mock pin gets pulses only from the in-process simulator;
      out of process it would read 0 while the belt moves and SR-CHAN-2 would stop the belt.
    * Key-relay mode: the console-driven treadmill and its relay are simulated in-process
      only (``treadmill sim`` simulates our firmware, which this mode does not use).
    """
    port = config.serial.port
    if config.gpio.pin_factory != "mock" or port == SIM_PORT:
        return
    if config.drive.mode == "key_relay":
        problems.append(
            (
                ("serial", "port"),
                f"key-relay mode on mock pins needs the simulated console treadmill, which runs "
                f'only in-process: set serial.port: "{SIM_PORT}" (got {port!r}; treadmill sim '
                "simulates our firmware, which this mode does not use)",
            )
        )
    elif config.belt_sensor is not None:
        problems.append(
            (
                ("belt_sensor",),
                f"the Pi's belt sensor on mock pins gets its pulses only from a simulator in "
                f'this process (serial.port: "{SIM_PORT}"); with {port!r} (treadmill sim, '
                "--avr or --native in another process) it would read 0 while the belt moves "
                "and the channel check (SR-CHAN-2) would stop the belt. Remove the belt_sensor "
                f'section to run on one speed channel, or use serial.port: "{SIM_PORT}"',
            )
        )
