"""A throw-away MQTT broker for ``treadmill demo``, on 127.0.0.1 only.

Two implementations, chosen by :class:`DemoBroker` (``kind="auto"`` takes the first that
exists):

* ``mosquitto``: the Debian broker binary, run as a child process with a config in a temp
  folder: one listener on ``127.0.0.1``, anonymous clients allowed (nothing outside this
  machine can reach the port), no persistence.
* ``amqtt``: the pure-Python asyncio broker (``pip install .[demo]``), in-process. Its
  defaults listen on every interface: here the only listener binds ``127.0.0.1`` and the
  only plugin is anonymous authentication. It speaks MQTT 3.1.1 only; the controller's
  publisher falls back to it.

This broker is for the demo. Production uses a mosquitto configured with users, an ACL
and TLS (docs/examples/).
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import logging
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal

from controller.errors import BrokerUnavailableError

__all__ = ["LOOPBACK", "BrokerUnavailableError", "DemoBroker", "free_port"]

logger = logging.getLogger(__name__)

LOOPBACK: Final[str] = "127.0.0.1"
START_TIMEOUT_S: Final[float] = 5.0
STOP_TIMEOUT_S: Final[float] = 3.0

BrokerKind = Literal["auto", "mosquitto", "amqtt"]


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port on ``host`` that was free a moment ago (chosen by the OS)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _mosquitto_binary() -> str | None:
    found = shutil.which("mosquitto")
    if found is not None:
        return found
    for candidate in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"):
        if Path(candidate).exists():
            return candidate
    return None


def _amqtt_available() -> bool:
    try:
        import amqtt.broker  # noqa: F401, PLC0415 - optional extra, only probed here
    except ImportError:
        return False
    return True


async def _port_open(host: str, port: int, timeout_s: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        try:
            _reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port), timeout=0.5
            )
        except (OSError, TimeoutError):
            await asyncio.sleep(0.02)  # polling the port until it answers
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True
    return False


class DemoBroker:
    """Start a loopback-only MQTT broker on a free port (async context manager).

    >>> async def main() -> None:  # doctest: +SKIP
    ...     async with DemoBroker() as broker:
    ...         print(broker.kind, broker.host, broker.port)
    """

    def __init__(self, kind: BrokerKind = "auto") -> None:
        self.requested: BrokerKind = kind
        self.kind: str | None = None
        self.host: str = LOOPBACK
        self.port: int = 0
        self._process: asyncio.subprocess.Process | None = None
        self._tempdir: tempfile.TemporaryDirectory[str] | None = None
        self._amqtt: Any | None = None

    async def __aenter__(self) -> DemoBroker:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def subscribe_hint(self) -> str:
        """The command line that shows the same telemetry."""
        return f"mosquitto_sub -h {self.host} -p {self.port} -t 'treadmill/#' -v"

    async def start(self) -> None:
        """Start the broker. Raises :class:`BrokerUnavailableError` if none can run."""
        kinds: list[str]
        if self.requested == "auto":
            kinds = []
            if _mosquitto_binary() is not None:
                kinds.append("mosquitto")
            if _amqtt_available():
                kinds.append("amqtt")
            if not kinds:
                raise BrokerUnavailableError(
                    "no MQTT broker for the demo: install mosquitto "
                    "(sudo apt-get install mosquitto) or the demo extra "
                    "(.venv/bin/pip install -e '.[demo]'), or run the demo with --broker none"
                )
        else:
            kinds = [self.requested]
        errors: list[str] = []
        for kind in kinds:
            try:
                if kind == "mosquitto":
                    await self._start_mosquitto()
                else:
                    await self._start_amqtt()
            except BrokerUnavailableError as exc:
                errors.append(str(exc))
                continue
            self.kind = kind
            logger.info("demo MQTT broker (%s) on %s:%d", kind, self.host, self.port)
            return
        raise BrokerUnavailableError("; ".join(errors))

    async def _start_mosquitto(self) -> None:
        binary = _mosquitto_binary()
        if binary is None:
            raise BrokerUnavailableError(
                "mosquitto is not installed (sudo apt-get install mosquitto)"
            )
        self._tempdir = tempfile.TemporaryDirectory(prefix="treadmill-demo-broker-")
        folder = Path(self._tempdir.name)
        last_error = ""
        for _attempt in range(3):  # the free port may be taken between choosing and binding
            port = free_port()
            conf = folder / "mosquitto.conf"
            conf.write_text(
                "\n".join(
                    [
                        "per_listener_settings true",
                        f"listener {port} {LOOPBACK}",
                        "allow_anonymous true",
                        "persistence false",
                        # Run as root, mosquitto would switch to the 'mosquitto' user;
                        # stay who we are (nothing to protect in a throw-away broker).
                        f"user {getpass.getuser()}",
                        "log_dest stderr",
                        "log_type error",
                        "log_type warning",
                    ]
                )
                + "\n",
                encoding="utf-8",
            )
            process = await asyncio.create_subprocess_exec(
                binary,
                "-c",
                str(conf),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            if await _port_open(LOOPBACK, port, START_TIMEOUT_S) and process.returncode is None:
                self._process = process
                self.port = port
                return
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            _out, err = await process.communicate()
            last_error = err.decode(errors="replace").strip()[-300:]
        self._cleanup_tempdir()
        raise BrokerUnavailableError(f"mosquitto did not start on {LOOPBACK}: {last_error}")

    async def _start_amqtt(self) -> None:
        try:
            from amqtt.broker import Broker  # noqa: PLC0415 - optional extra
        except ImportError as exc:
            raise BrokerUnavailableError(
                "amqtt is not installed (.venv/bin/pip install -e '.[demo]')"
            ) from exc
        last_error = ""
        for _attempt in range(3):
            port = free_port()
            config = {
                "listeners": {"default": {"type": "tcp", "bind": f"{LOOPBACK}:{port}"}},
                # Only anonymous authentication: no $SYS publisher, no packet logging. The
                # listener is on loopback, so only this machine can connect.
                "plugins": {
                    "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True},
                },
            }
            broker = Broker(config)
            try:
                await broker.start()
            except Exception as exc:  # amqtt wraps bind errors in its own BrokerError
                last_error = str(exc)
                continue
            self._amqtt = broker
            self.port = port
            return
        raise BrokerUnavailableError(f"amqtt did not start on {LOOPBACK}: {last_error}")

    async def stop(self) -> None:
        """Stop the broker (idempotent)."""
        process, self._process = self._process, None
        if process is not None and process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), STOP_TIMEOUT_S)
            except TimeoutError:
                process.kill()
                await process.wait()
        if process is not None and process.stderr is not None:
            with contextlib.suppress(Exception):
                await process.stderr.read()
        broker, self._amqtt = self._amqtt, None
        if broker is not None:
            try:
                await asyncio.wait_for(broker.shutdown(), STOP_TIMEOUT_S)
            except Exception:  # a broker that fails to stop must not hide the demo's result
                logger.debug("amqtt shutdown failed", exc_info=True)
        self._cleanup_tempdir()

    def _cleanup_tempdir(self) -> None:
        if self._tempdir is not None:
            self._tempdir.cleanup()
            self._tempdir = None
