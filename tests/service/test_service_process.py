"""`treadmill run` as a real process: signals, reload, systemd notify.

The simulated firmware runs in the test process on a real pseudo-terminal; the service drives
it through the production serial code. Mock GPIO pins are driven over the mock-panel socket.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from controller.rules.model import Mode
from firmware_bridge.sim.pty import PtySimulator
from tests.service.harness import NotifyListener, ServiceProcess, write_config
from tests.waiting import wait_until

pytestmark = pytest.mark.slow


@pytest.fixture
async def simulator() -> AsyncIterator[PtySimulator]:
    async with PtySimulator(seed=3) as sim:
        yield sim


@pytest.fixture
async def service(tmp_path: Path, simulator: PtySimulator) -> AsyncIterator[ServiceProcess]:
    mock_socket = tmp_path / "gpio.sock"
    config = write_config(tmp_path, port=simulator.port, mock_socket=mock_socket)
    notify = NotifyListener(tmp_path / "notify.sock")
    process = ServiceProcess(config, mock_socket, notify)
    await process.start()
    try:
        await process.wait_socket()
        await wait_until(lambda: notify.has("READY=1"), timeout_s=15, what="READY=1")
        yield process
    finally:
        await process.kill()
        notify.close()


async def wait_until_status(service: ServiceProcess, fragment: str) -> None:
    """Poll the service's own state (mock-panel `status`) until it contains ``fragment``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while fragment not in await service.command("status"):
        if loop.time() > deadline:
            raise AssertionError(f"service state never showed {fragment}")
        await asyncio.sleep(0.02)


async def start_belt(service: ServiceProcess, simulator: PtySimulator, kmh: float) -> None:
    assert await service.command("grip both") == "ok"
    await wait_until_status(service, '"grip":"both"')
    assert await service.command("press start") == "ok"
    assert await service.command(f"target {kmh}") == "ok"
    await wait_until(
        lambda: simulator.firmware.true_speed_kmh >= kmh - 0.05,
        timeout_s=15,
        what=f"belt at {kmh} km/h",
    )


async def test_sigterm_brings_belt_to_rest_before_exit_0(
    service: ServiceProcess, simulator: PtySimulator
) -> None:
    await start_belt(service, simulator, 0.8)
    service.signal(signal.SIGTERM)
    code = await service.wait(timeout_s=20)
    speed_at_exit = simulator.firmware.true_speed_kmh
    assert code == 0, service.log()
    assert speed_at_exit <= 0.1, f"belt at {speed_at_exit} km/h when the service exited"
    assert "STOPPING=1" in "\n".join(m for _, m in service.notify.poll()), service.log()


async def test_sighup_with_broken_file_keeps_running_on_old_config(
    service: ServiceProcess, simulator: PtySimulator
) -> None:
    await start_belt(service, simulator, 0.6)
    good = service.config_path.read_text()
    service.config_path.write_text(good.replace("max_kmh: 2.0", "max_kmh: [oops"))
    service.signal(signal.SIGHUP)
    await wait_until(
        lambda: "config_rejected" in service.log(), timeout_s=10, what="config_rejected logged"
    )
    assert service.returncode is None
    assert str(service.config_path) in service.log()
    status = await service.command("status")
    assert status.startswith("ok ")
    assert f'"state":"{Mode.RUNNING.value}"' in status
    assert simulator.firmware.true_speed_kmh >= 0.5  # still running, unaffected


async def test_ready_and_watchdog_and_watchdog_stops_when_link_goes_stale(
    service: ServiceProcess, simulator: PtySimulator
) -> None:
    await wait_until(
        lambda: service.notify.count("WATCHDOG=1") >= 3, timeout_s=5, what="WATCHDOG=1 pings"
    )
    await simulator.disconnect()
    loop = asyncio.get_running_loop()
    cut_at = loop.time()
    await wait_until(
        lambda: "link_lost" in service.log() or "stale" in service.log(),
        timeout_s=5,
        what="the controller noticing the link loss",
    )
    # Allow pings already in flight (stale limit 500 ms), then none may arrive for 2 s.
    quiet_from = cut_at + 1.0
    await asyncio.sleep(0)
    await wait_until(lambda: loop.time() >= quiet_from + 2.0, timeout_s=5, what="2 s of watch")
    late = [t for t, m in service.notify.poll() if "WATCHDOG=1" in m.split("\n") and t > quiet_from]
    assert late == [], f"{len(late)} WATCHDOG=1 pings after the link went stale"
    assert service.returncode is None


async def test_sigterm_with_a_mock_panel_client_connected_logs_no_error(
    service: ServiceProcess, simulator: PtySimulator
) -> None:
    """A clean shutdown logs no ERROR and no traceback, even with a panel client connected."""
    reader, writer = await asyncio.open_unix_connection(str(service.mock_socket))
    writer.write(b"status\n")
    await writer.drain()
    assert (await asyncio.wait_for(reader.readline(), timeout=5)).startswith(b"ok ")
    service.signal(signal.SIGTERM)
    code = await service.wait(timeout_s=20)
    writer.close()
    assert code == 0, service.log()
    assert " ERROR " not in service.log(), service.log()
    assert "Traceback" not in service.log(), service.log()
