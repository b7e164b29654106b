"""The systemd unit: it verifies cleanly, its sandbox scores <= 2.0, and it agrees with the code.

``systemd-analyze verify`` reports problems (unknown keys, bad values) as warnings on stderr
while still exiting 0, so the test requires empty output. The installed ExecStart binary
(/opt/treadmill/venv/bin/treadmill) does not exist on a development machine: a copy of the
unit pointing at an existing executable is verified, and the original may only fail on that
one message.
"""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from controller.settings.config import EXIT_CONFIG, load_config

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "systemd" / "treadmill-controller.service"
INSTALLED_BINARY = "/opt/treadmill/venv/bin/treadmill"
MAX_EXPOSURE = 2.0

ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")


def unit_settings() -> dict[str, list[str]]:
    """Every ``Key=value`` of the unit, keys may repeat (systemd appends)."""
    result: dict[str, list[str]] = {}
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        result.setdefault(key, []).append(value)
    return result


def run_analyze(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert ANALYZE is not None
    return subprocess.run(
        [ANALYZE, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=cwd,
    )


def copy_with_exec(tmp_path: Path, binary: str, name: str = UNIT.name) -> Path:
    text = UNIT.read_text()
    assert text.count(f"ExecStart={INSTALLED_BINARY} ") == 1
    copy = tmp_path / name
    copy.write_text(text.replace(f"ExecStart={INSTALLED_BINARY} ", f"ExecStart={binary} "))
    return copy


@needs_analyze
def test_unit_verifies_without_any_warning(tmp_path: Path) -> None:
    copy = copy_with_exec(tmp_path, "/bin/true")
    result = run_analyze("verify", str(copy), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""
    assert result.stderr.strip() == ""


@needs_analyze
def test_original_unit_fails_verify_only_on_the_missing_install_binary(tmp_path: Path) -> None:
    result = run_analyze("verify", str(UNIT), cwd=tmp_path)
    messages = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    if Path(INSTALLED_BINARY).exists():  # an installed machine
        assert messages == []
    else:
        assert messages == [
            f"{UNIT.name}: Command {INSTALLED_BINARY} is not executable: No such file or directory"
        ]


@needs_analyze
def test_verify_does_catch_a_misspelt_key(tmp_path: Path) -> None:
    """The empty-output check above is meaningful: a typo produces a warning."""
    copy = copy_with_exec(tmp_path, "/bin/true")
    copy.write_text(copy.read_text().replace("ProtectSystem=strict", "ProtectSytem=strict"))
    result = run_analyze("verify", str(copy), cwd=tmp_path)
    assert "Unknown key 'ProtectSytem'" in result.stderr


@needs_analyze
def test_security_exposure_is_at_most_two(tmp_path: Path) -> None:
    result = run_analyze("security", "--offline=yes", "--no-pager", str(UNIT), cwd=tmp_path)
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", result.stdout)
    assert match is not None, result.stdout + result.stderr
    exposure = float(match.group(1))
    print(f"systemd-analyze security exposure: {exposure}")  # noqa: T201  (figure for the log)
    assert exposure <= MAX_EXPOSURE


def test_unit_is_a_notify_service_with_watchdog_and_reload() -> None:
    s = unit_settings()
    assert s["Type"] == ["notify"]
    assert s["NotifyAccess"] == ["main"]
    assert s["ExecStart"] == [f"{INSTALLED_BINARY} run --config /etc/treadmill/treadmill.yaml"]
    assert s["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert s["Restart"] == ["on-failure"]
    assert float(s["WatchdogSec"][0]) > 0
    assert s["KillSignal"] == ["SIGTERM"]
    assert str(EXIT_CONFIG) in s["RestartPreventExitStatus"][0].split()


def test_stop_timeout_exceeds_the_shipped_shutdown_wait() -> None:
    """systemd must not SIGKILL the service while it waits for the belt to stop."""
    shipped = load_config(ROOT / "config" / "treadmill.yaml")
    timeout_s = float(unit_settings()["TimeoutStopSec"][0])
    assert timeout_s >= shipped.control.shutdown_timeout_s + 10


def test_devices_and_groups_allow_serial_and_gpio_only() -> None:
    s = unit_settings()
    assert s["DevicePolicy"] == ["closed"]
    assert sorted(s["DeviceAllow"]) == sorted(
        [
            "char-ttyUSB rw",
            "char-ttyACM rw",
            "char-ttyAMA rw",
            "/dev/ttyS0 rw",
            "/dev/gpiochip0 rw",
            "/dev/gpiochip4 rw",
        ]
    )
    assert s["SupplementaryGroups"] == ["dialout gpio"]
    assert s["User"] == ["treadmill"]
    assert s["WorkingDirectory"] == ["/run/treadmill"]  # lgpio writes its pipe here
    assert s["RuntimeDirectory"] == ["treadmill"]
    assert s["StateDirectory"] == ["treadmill"]
    assert "PrivateDevices" not in s  # it would hide the serial port and the GPIO chip
    assert "PrivateUsers" not in s  # dialout and gpio would be unmapped


def test_state_directory_matches_the_shipped_config() -> None:
    shipped = load_config(ROOT / "config" / "treadmill.yaml")
    assert shipped.state_dir == "/var/lib/" + unit_settings()["StateDirectory"][0]


def test_unit_parses_as_ini_with_the_three_sections() -> None:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keep key case
    parser.read_string(UNIT.read_text())
    assert parser.sections() == ["Unit", "Service", "Install"]
    assert parser["Install"]["WantedBy"] == "multi-user.target"


INSTALL_DOC = ROOT / "docs" / "install.md"


def documented_serial_ports() -> list[tuple[str, str, list[str], str]]:
    """Rows of the serial-port table in docs/install.md: (port, board, devices, allow)."""
    text = INSTALL_DOC.read_text(encoding="utf-8")
    table = text[
        text.index("<!-- serial-ports:begin -->") : text.index("<!-- serial-ports:end -->")
    ]
    rows = []
    for line in table.splitlines()[3:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        devices = re.findall(r"`(/dev/tty[A-Za-z]+\d+)`", cells[2])
        allow = cells[3].strip("`").removeprefix("DeviceAllow=")
        rows.append((cells[0], cells[1], devices, allow))
    return rows


def test_every_documented_serial_port_is_allowed_by_the_unit() -> None:
    """The unit's device allow-list opens every serial device docs/install.md tells users to
    use (the Pi 4's mini UART behind /dev/serial0 included), and the table says how."""
    allowed = unit_settings()["DeviceAllow"]
    rows = documented_serial_ports()
    assert {port for port, *_ in rows} == {"`/dev/serial/by-id/usb-...`", "`/dev/serial0`"} | {
        "`/dev/serial/by-id/usb-...` (CDC ACM boards)"
    }
    nodes = set()
    for _port, _board, devices, allow in rows:
        assert allow in allowed, f"{allow} is documented but not in the unit"
        for device in devices:
            nodes.add(device)
            kernel_class = re.sub(r"\d+$", "", device.removeprefix("/dev/"))
            assert f"char-{kernel_class} rw" in allowed or f"{device} rw" in allowed, device
    assert {"/dev/ttyS0", "/dev/ttyAMA0", "/dev/ttyUSB0", "/dev/ttyACM0"} <= nodes
    # The mini UART is allowed by node: the ttyS class (major 4) would open the consoles too.
    assert "char-ttyS rw" not in allowed
    assert "dtoverlay=disable-bt" in INSTALL_DOC.read_text(encoding="utf-8")


def test_unit_starts_after_the_clock_is_set() -> None:
    """Session dates need the wall clock: the unit is ordered after time-sync.target."""
    after = " ".join(unit_settings()["After"]).split()
    assert "time-sync.target" in after
    assert "time-sync.target" not in " ".join(unit_settings().get("Wants", []))
