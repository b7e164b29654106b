"""A normal (non-editable) install runs what a new user tries first.

The wheel is built from this tree, installed into a fresh virtual environment outside the
tree, and its ``treadmill`` console script is run from an empty folder: ``--version`` and
``--help``, ``demo --help``, ``scenario --list`` and a real run of a bundled scenario on the
simulator. pip builds the wheel as for any user (in an isolated build environment); the
runtime dependencies are not downloaded again: the new environment sees the
development environment's site-packages through a ``.pth`` line, after its own.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

from controller import version

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``bin`` folder of a fresh venv with this tree's wheel installed (not editable)."""
    base = tmp_path_factory.mktemp("wheel-install")
    wheels = base / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(ROOT)],
        check=True,
        timeout=300,
        cwd=base,
    )
    (wheel,) = wheels.glob("treadmill_controller-*.whl")
    env_dir = base / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.strip()
    # Dependencies from the development environment, searched after the new site-packages.
    (Path(site) / "zz_dev_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--no-deps",
            "-q",
            str(wheel),
        ],
        check=True,
        timeout=300,
        cwd=base,
    )
    return env_dir / "bin"


def treadmill(bin_dir: Path, *args: str, cwd: Path, timeout_s: float = 120) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    result = subprocess.run(
        [str(bin_dir / "treadmill"), *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        cwd=cwd,
        env=env,
        check=False,
    )
    assert result.returncode == 0, f"treadmill {' '.join(args)}: {result.stdout}{result.stderr}"
    return result.stdout


def test_the_installed_package_is_the_wheel_not_this_tree(installed: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [str(installed / "python"), "-c", "import controller; print(controller.__file__)"],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert str(installed.parent) in result.stdout
    assert str(ROOT) not in result.stdout


def test_version_and_help(installed: Path, tmp_path: Path) -> None:
    assert treadmill(installed, "--version", cwd=tmp_path).strip() == f"treadmill {version()}"
    text = treadmill(installed, "--help", cwd=tmp_path)
    for command in ("run", "check-config", "demo", "scenario", "monitor", "history"):
        assert command in text
    assert "simulated treadmill" in treadmill(installed, "demo", "--help", cwd=tmp_path)


def test_bundled_demo_config_is_valid(installed: Path, tmp_path: Path) -> None:
    site = subprocess.run(
        [
            str(installed / "python"),
            "-c",
            "from controller.resources import bundled_config; print(bundled_config('demo.yaml'))",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
        timeout=60,
    ).stdout.strip()
    assert "bundled" in site
    treadmill(installed, "check-config", site, cwd=tmp_path)


def test_bundled_scenario_runs(installed: Path, tmp_path: Path) -> None:
    listing = treadmill(installed, "scenario", "--list", cwd=tmp_path)
    names = {line for line in listing.splitlines() if not line.startswith("(")}
    assert names == {path.stem for path in (ROOT / "scenarios").glob("*.yaml")}
    report = treadmill(
        installed, "scenario", "estop_stops_belt_reset_needs_release", cwd=tmp_path, timeout_s=180
    )
    assert "PASS" in report.upper()
