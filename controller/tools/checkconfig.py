"""``treadmill check-config PATH``: validate a configuration file before using it.

Exit status 0 with a short summary on stdout (warnings, if any, on stderr), or
:data:`~controller.settings.config.EXIT_CONFIG` (78, ``EX_CONFIG``) with one line per problem on
stderr in the form ``PATH:LINE:COL: key.path: message``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TextIO

from controller.settings.config import EXIT_CONFIG, ConfigError, load_config_report
from controller.settings.schema import AppConfig

_HANDS = {0: "-", 1: ">=1 hand", 2: "2 hands"}


def _num(value: float) -> str:
    """``2.0`` -> ``"2.0"``, ``0.25`` -> ``"0.25"``, ``0.001`` -> ``"0.001"``: at least one
    decimal, every significant digit up to six, no float noise (a rate of 0.001 never reads
    as 0.0)."""
    text = f"{value:.6g}"
    return text if "." in text or "e" in text else text + ".0"


def check_config_main(path: Path, out: TextIO, err: TextIO) -> int:
    """Check the file at ``path``; print the summary to ``out``, problems to ``err``.

    Returns 0 when the controller would start with it, :data:`EXIT_CONFIG` (78) otherwise.
    """
    try:
        report = load_config_report(path)
    except ConfigError as exc:
        for line in exc.lines():
            print(line, file=err)
        count = len(exc.problems)
        print(
            f"{path}: {count} problem{'s' if count != 1 else ''}: the controller will not "
            "start with this file (see docs/configuration.md)",
            file=err,
        )
        return EXIT_CONFIG
    for warning in report.warnings:
        print(f"{warning.text()} (warning)", file=err)
    out.write(summary(report.config, str(path)))
    return 0


def summary(config: AppConfig, source: str) -> str:
    """The human summary check-config prints for a good file."""
    fw = config.firmware
    control = config.control
    serial = config.serial
    port = "in-process simulator" if serial.is_simulator else serial.port
    mqtt = config.mqtt
    if mqtt.enabled:
        tls = ", TLS" if mqtt.tls is not None else ""
        mqtt_text = f"{mqtt.host}:{mqtt.port}{tls}, topics {config.mqtt_topic_prefix}/..."
    else:
        mqtt_text = "disabled"
    training = config.training
    training_text = (
        f"on, log {Path(config.state_dir) / training.db_file}" if training.enabled else "off"
    )
    inputs = config.gpio.inputs.items()
    sensor = config.belt_sensor
    if sensor is None:
        sensor_text = "none: one speed channel (verify-config lists the uncovered double faults)"
    else:
        sensor_text = (
            f"BCM {sensor.pin}, {_num(sensor.distance_per_pulse_mm)} mm a pulse, agree within "
            f"{_num(sensor.agree.abs_kmh)} km/h / {sensor.agree.rel:.0%} for "
            f"{sensor.agree.duration_ms} ms"
        )
    lines = [
        f"{source}: OK",
        f"  treadmill   {config.treadmill.id} ({config.treadmill.name})",
        f"  serial      {port} at {serial.baud} baud",
        f"  firmware    ceiling {_num(fw.max_speed_kmh)} km/h, accel <= {_num(fw.max_accel_kmh_s)} "
        f"km/h/s, decel <= {_num(fw.max_decel_kmh_s)} km/h/s, lease {fw.lease_ms} ms, "
        f"stale {fw.stale_ms} ms",
        f"  control     {control.rate_hz} Hz ({control.tick_ms} ms tick), stop ramp "
        f"{_num(control.stop_decel_kmh_s)} km/h/s, shutdown wait {control.shutdown_timeout_s:g} s",
        f"  gpio        {config.gpio.pin_factory}, {len(inputs)} inputs "
        f"({', '.join(f'{name}={wiring.pin}' for name, wiring in inputs)})",
        f"  belt sensor {sensor_text}",
        f"  mqtt        {mqtt_text}",
        f"  training    {training_text}",
        "",
    ]
    header = ("stage", "name", "max km/h", "start km/h", "accel km/h/s", "grip", "grace ms", "clip")
    rows = [header]
    for number, stage in enumerate(config.stages, start=1):
        grip = stage.grip
        policy = _HANDS.get(grip.hands_required, str(grip.hands_required))
        watched = grip.hands_required > 0 or grip.on_loss == "warn"
        if grip.hands_required == 0 and grip.on_loss == "warn":
            policy = "optional, warn"
        elif grip.hands_required:
            policy += f", {grip.on_loss}"
            if grip.on_loss == "slow":
                policy += f" to {_num(grip.slow_to_kmh)}"
        rows.append(
            (
                str(number),
                stage.name,
                f"{_num(stage.max_kmh)}",
                f"{_num(stage.start_kmh)}",
                f"{_num(stage.accel_kmh_s)}",
                policy,
                str(grip.grace_ms) if watched else "-",
                "yes" if stage.clip_required else "no",
            )
        )
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    numeric = {0, 2, 3, 4, 6}
    for row in rows:
        cells = [
            cell.rjust(widths[i]) if i in numeric else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        lines.append("  " + "  ".join(cells).rstrip())
    return "\n".join(lines) + "\n"
