"""``treadmill sim``: the command line and the stdin commands of the simulator."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from firmware_bridge.sim.cli import execute_command, sim_main
from firmware_bridge.sim.firmware import SimFault
from firmware_bridge.sim.pty import PtySimulator
from firmware_bridge.wire.messages import FwFault
from tests.sim.helpers import running_bridge
from tests.waiting import wait_until

pytestmark = pytest.mark.timeout(30)

LINE_TIMEOUT_S = 5.0


async def test_stdin_commands_inject_clear_and_report(tmp_path: Path) -> None:
    async with PtySimulator(seed=2, link_path=tmp_path / "fw") as sim:
        fw = sim.firmware
        assert await execute_command(sim, "inject runaway") == "OK inject runaway"
        assert SimFault.RUNAWAY in fw.active_faults
        assert await execute_command(sim, "inject runaway 1.5") == "OK inject runaway 1.5"
        assert await execute_command(sim, "clear runaway") == "OK clear runaway"
        assert SimFault.RUNAWAY not in fw.active_faults
        assert await execute_command(sim, "inject corrupt_bytes 10") == "OK inject corrupt_bytes 10"
        assert SimFault.CORRUPT_BYTES in fw.active_faults
        status = await execute_command(sim, "status")
        assert status.startswith("OK status state=")
        assert "injected=corrupt_bytes" in status
        assert "key=closed" in status
        assert await execute_command(sim, "key open") == "OK key open"
        assert not fw.safety_key_closed
        assert not fw.motor_powered
        await wait_until(
            lambda: fw.fault is FwFault.SAFETY_KEY_OPEN, timeout_s=1.0, what="key fault"
        )
        assert await execute_command(sim, "key closed") == "OK key closed"
        assert fw.safety_key_closed
        assert await execute_command(sim, "inject disconnect") == "OK inject disconnect"
        assert not sim.connected
        assert not (tmp_path / "fw").exists()  # the by-id style link goes with the cable
        assert await execute_command(sim, "clear disconnect") == "OK clear disconnect"
        assert sim.connected
        assert (tmp_path / "fw").exists()
        boot_id = fw.boot_id
        assert await execute_command(sim, "inject reboot") == "OK inject reboot"
        assert fw.boot_id != boot_id
        assert (await execute_command(sim, "help")).startswith("OK commands:")
        assert await execute_command(sim, "   ") == ""


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("inject gremlins", "ERR unknown simulated fault 'gremlins'"),
        ("inject drop_frames 0", "ERR drop_frames needs a percentage in (0, 100]"),
        ("inject drop_frames many", "ERR could not convert string to float"),
        ("inject sensor_freeze 5", "ERR sensor_freeze takes no percentage"),
        ("clear runaway now", "ERR `clear` takes only a fault name"),
        ("key sideways", "ERR unknown command 'key sideways'"),
        ("launch", "ERR unknown command 'launch'"),
    ],
)
async def test_bad_stdin_commands_get_an_error_line(line: str, message: str) -> None:
    async with PtySimulator(seed=2) as sim:
        answer = await execute_command(sim, line)
        assert answer.startswith(message), answer
        assert "\n" not in answer


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--fault", "gremlins"], "unknown simulated fault 'gremlins'"),
        (["--fault", "reboot"], "is an event, not a state"),
        (["--fault", "corrupt_bytes=lots"], "is not a number"),
        (["--seed", "x"], "invalid int value"),
        (["--avr", "/nonexistent/fw.elf"], "no such file (build it with `make -C firmware`)"),
        (["--native", "/nonexistent/treadmill-native"], "make -C firmware native"),
        (["--avr", "x.elf", "--fault", "runaway"], "work with the Python simulation only"),
        (["--avr", "x.elf", "--native"], "not allowed with argument"),
    ],
)
def test_bad_arguments_exit_2_with_a_clear_message(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        sim_main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


@contextlib.asynccontextmanager
async def sim_process(*args: str) -> AsyncIterator[asyncio.subprocess.Process]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "import sys; from firmware_bridge.sim.cli import sim_main; sys.exit(sim_main())",
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def read_line(proc: asyncio.subprocess.Process) -> str:
    assert proc.stdout is not None
    raw = await asyncio.wait_for(proc.stdout.readline(), LINE_TIMEOUT_S)
    return raw.decode().rstrip("\n")


async def test_sim_process_prints_its_pty_serves_a_bridge_and_stops_on_sigterm(
    tmp_path: Path,
) -> None:
    link = tmp_path / "firmware.tty"
    async with sim_process("--link", str(link), "--seed", "4", "--fault", "drop_frames=1") as proc:
        assert proc.stdin is not None
        first = await read_line(proc)
        assert first == f"PTY {link}"
        assert link.is_symlink()
        async with running_bridge(str(link)) as bridge:
            await asyncio.wait_for(bridge.ready.wait(), LINE_TIMEOUT_S)
            assert bridge.hello is not None
            proc.stdin.write(b"status\n")
            await proc.stdin.drain()
            status = await read_line(proc)
            assert status.startswith("OK status state=idle")
            assert f"boot_id={bridge.hello.boot_id:#010x}" in status
            assert "injected=drop_frames" in status
            proc.stdin.write(b"inject reboot\n")
            await proc.stdin.drain()
            assert await read_line(proc) == "OK inject reboot"
            await wait_until(
                lambda: bridge.stats.handshakes >= 2, timeout_s=LINE_TIMEOUT_S, what="re-handshake"
            )
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), LINE_TIMEOUT_S) == 0
        assert not link.exists()  # removed on exit


async def test_sim_process_without_stdin_runs_until_sigint() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "import sys; from firmware_bridge.sim.cli import sim_main; sys.exit(sim_main())",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        first = await read_line(proc)
        assert first.startswith("PTY /dev/pts/")
        assert os.path.exists(first.removeprefix("PTY "))  # noqa: ASYNC240 - stat of a device node
        assert proc.returncode is None  # /dev/null stdin: keeps running
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), LINE_TIMEOUT_S) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_sim_process_status_keys_and_a_replug_announces_the_new_pty() -> None:
    async with sim_process() as proc:
        assert proc.stdin is not None
        first = await read_line(proc)
        assert first.startswith("PTY /dev/pts/")
        proc.stdin.write(b"status\n")
        await proc.stdin.drain()
        status = await read_line(proc)
        # the keys every firmware runner answers (docs/firmware.md)
        for key in ("belt_kmh=0.000", "duty_pct=0.00", "motor_enabled=0", "state="):
            assert key in status, status
        proc.stdin.write(b"inject disconnect\nclear disconnect\n")
        await proc.stdin.drain()
        assert await read_line(proc) == "OK inject disconnect"
        replug = await read_line(proc)
        assert replug.startswith("PTY /dev/pts/")
        assert os.path.exists(replug.removeprefix("PTY "))  # noqa: ASYNC240 - stat of a device node
        assert await read_line(proc) == "OK clear disconnect"
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), LINE_TIMEOUT_S) == 0
