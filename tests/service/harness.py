"""Run the real service against the simulated firmware, in-process or as `treadmill run`."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import yaml

from controller.runtime.service import Service
from controller.settings.config import load_config
from firmware_bridge.sim.firmware import SimConfig
from firmware_bridge.sim.pty import PtySimulator
from tests.waiting import wait_until

REPO = Path(__file__).resolve().parents[2]
DEMO_CONFIG = REPO / "config" / "demo.yaml"


def write_config(
    directory: Path,
    *,
    port: str = "sim://",
    mock_socket: Path | None = None,
    mqtt: dict[str, Any] | None = None,
    name: str = "treadmill.yaml",
    edit: Any = None,
) -> Path:
    """A config based on config/demo.yaml with a private state dir; MQTT off unless given."""
    raw = yaml.safe_load(DEMO_CONFIG.read_text())
    raw["serial"]["port"] = port
    if port != "sim://":
        # A simulator in another process: the Pi belt sensor's pulses cannot reach this
        # service's mock pins, so it runs on one speed channel.
        raw.pop("belt_sensor", None)
    raw["state_dir"] = str(directory / "state")
    (directory / "state").mkdir(exist_ok=True)
    raw["gpio"]["mock_socket"] = str(mock_socket) if mock_socket else None
    raw["mqtt"] = {"enabled": False} if mqtt is None else mqtt
    raw["logging"] = {"level": "INFO", "format": "plain"}
    if edit is not None:
        edit(raw)
    path = directory / name
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@contextlib.asynccontextmanager
async def running_service(
    directory: Path, *, sim_config: SimConfig | None = None, edit: Any = None
) -> AsyncIterator[Service]:
    """The real Service, in this event loop, on an in-process simulator and mock pins."""
    path = write_config(directory, edit=edit)
    simulator = PtySimulator(sim_config, seed=7)
    service = Service(
        load_config(path), config_path=path, simulator=simulator, install_signal_handlers=False
    )
    task = asyncio.create_task(service.run(), name="service-under-test")
    try:
        await wait_until(
            lambda: service.ready.is_set() or task.done(), timeout_s=10, what="service ready"
        )
        if task.done():
            raise AssertionError(f"service ended before it was ready: exit {task.result()}")
        yield service
    finally:
        service.request_shutdown("test finished")
        try:
            await asyncio.wait_for(task, timeout=20)
        except TimeoutError:
            task.cancel()
            raise


class NotifyListener:
    """A stand-in for systemd's notify socket: collects every datagram."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[tuple[float, str]] = []
        self._loop = asyncio.get_running_loop()
        # Drain as datagrams arrive (like systemd does), so the sender never sees a full buffer.
        self._loop.add_reader(self.sock.fileno(), self._drain)

    def _drain(self) -> None:
        now = self._loop.time()
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return
            self.messages.append((now, data.decode()))

    def poll(self) -> list[tuple[float, str]]:
        self._drain()
        return self.messages

    def has(self, line: str) -> bool:
        return any(line in message.split("\n") for _, message in self.poll())

    def count(self, line: str) -> int:
        return sum(line in message.split("\n") for _, message in self.poll())

    def close(self) -> None:
        self._loop.remove_reader(self.sock.fileno())
        self.sock.close()


class ServiceProcess:
    """`treadmill run --config PATH` as a subprocess, with the simulator in this process."""

    def __init__(self, config_path: Path, mock_socket: Path, notify: NotifyListener) -> None:
        self.config_path = config_path
        self.mock_socket = mock_socket
        self.notify = notify
        self.proc: asyncio.subprocess.Process | None = None
        self.stderr = bytearray()
        self._stderr_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        env = dict(os.environ, NOTIFY_SOCKET=str(self.notify.path), PYTHONUNBUFFERED="1")
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "controller.cli",
            "run",
            "--config",
            str(self.config_path),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        self._stderr_task = asyncio.create_task(self._read_stderr())

    async def _read_stderr(self) -> None:
        assert self.proc is not None
        assert self.proc.stderr is not None
        while chunk := await self.proc.stderr.read(4096):
            self.stderr.extend(chunk)

    def log(self) -> str:
        return self.stderr.decode(errors="replace")

    async def command(self, line: str) -> str:
        reader, writer = await asyncio.open_unix_connection(str(self.mock_socket))
        try:
            writer.write(line.encode() + b"\n")
            await writer.drain()
            answer = await asyncio.wait_for(reader.readline(), timeout=5)
        finally:
            writer.close()
        return answer.decode().strip()

    async def wait_socket(self) -> None:
        await wait_until(
            lambda: self.mock_socket.exists() or self.returncode is not None,
            timeout_s=15,
            what="the mock panel socket",
        )
        if self.returncode is not None:
            raise AssertionError(f"service exited early ({self.returncode}):\n{self.log()}")

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.returncode

    def signal(self, signum: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    async def wait(self, timeout_s: float) -> int:
        assert self.proc is not None
        code = await asyncio.wait_for(self.proc.wait(), timeout=timeout_s)
        if self._stderr_task is not None:
            await asyncio.wait_for(self._stderr_task, timeout=5)
        return code

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
