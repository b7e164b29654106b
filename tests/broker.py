"""A real mosquitto broker for tests: password file, ACL, optional TLS.

Start one per test (or per session) and talk to it like production does::

    from tests.broker import MosquittoBroker

    with MosquittoBroker() as broker:          # free port on 127.0.0.1, auth + ACL on
        user, password = broker.credentials("controller")
        ...                                     # connect to broker.host, broker.port
        broker.stop()                           # the broker goes away (clients see it)
        broker.start()                          # back on the SAME port, nothing retained

Users (random passwords, see :attr:`MosquittoBroker.users`) and what the ACL lets them
do come from ``docs/examples/mosquitto.acl``, so the documented ACL is the tested one:

* ``controller``: writes ``treadmill/+/{availability,state,event,session}`` and
  discovery configs, reads ``treadmill/+/cmd/#`` and ``homeassistant/status``;
* ``dashboard``: reads ``treadmill/#``, writes only ``treadmill/+/cmd/stop``;
* ``trainer``: reads ``treadmill/#``, writes ``treadmill/+/cmd/#``;
* ``homeassistant``: ``homeassistant/#``, reads ``treadmill/#``, writes ``cmd/stop``.

Anonymous clients are refused unless ``anonymous=True`` (then there is no password
file and no ACL: a plain open listener). ``tls=True`` makes a test CA with trustme and
serves TLS only (``ca_file``; :meth:`client_certificate` for client certificates when
``require_client_cert=True``).

:meth:`start`, :meth:`stop` and :meth:`restart` block (they wait for the process and
the port): from async code call them through ``asyncio.to_thread`` so the event loop
keeps running. If mosquitto is not installed, :meth:`start` raises
:class:`MosquittoNotInstalledError` saying how to install it; the pytest fixtures turn
that into a failure, never a skip.
"""

from __future__ import annotations

import contextlib
import getpass
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final, Self

__all__ = [
    "DEFAULT_ACL",
    "MOSQUITTO",
    "USERS",
    "BrokerError",
    "BrokerUser",
    "MosquittoBroker",
    "MosquittoNotInstalledError",
    "free_port",
    "free_ports",
    "port_accepts",
    "start_or_fail",
]

MOSQUITTO: Final[Path] = Path("/usr/sbin/mosquitto")
DEFAULT_ACL: Final[Path] = Path(__file__).resolve().parent.parent / "docs/examples/mosquitto.acl"
USERS: Final[tuple[str, ...]] = ("controller", "dashboard", "trainer", "homeassistant")
INSTALL_HINT: Final[str] = (
    "mosquitto is not installed: the MQTT tests need a real broker. "
    "Install it with `sudo apt-get install mosquitto mosquitto-clients` "
    "(CI installs it in .ci/run)."
)


class MosquittoNotInstalledError(RuntimeError):
    """``/usr/sbin/mosquitto`` or ``mosquitto_passwd`` is missing."""


class BrokerError(RuntimeError):
    """The broker did not start or stop as expected; the message quotes its log."""


@dataclass(frozen=True)
class BrokerUser:
    username: str
    password: str


def port_accepts(host: str, port: int) -> bool:
    """True if a TCP connection to ``host``:``port`` succeeds now."""
    try:
        with socket.create_connection((host, port), 0.2):
            return True
    except OSError:
        return False


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the OS picks it)."""
    return free_ports(1, host)[0]


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` different TCP ports that were free a moment ago.

    Each socket stays bound until all are picked: two ``free_port()`` calls in a row may
    return the same port (the first is released before the second is chosen; measured here:
    2 pairs in 40 000).
    """
    with contextlib.ExitStack() as stack:
        ports: list[int] = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((host, 0))
            ports.append(sock.getsockname()[1])
        return ports


class MosquittoBroker:
    """One mosquitto process on ``host``:``port`` with a config in a temp folder."""

    host: Final[str] = "127.0.0.1"

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        anonymous: bool = False,
        acl_file: Path = DEFAULT_ACL,
        users: tuple[str, ...] = USERS,
        tls: bool = False,
        require_client_cert: bool = False,
        extra_config: str = "",
        start_timeout_s: float = 10.0,
    ) -> None:
        self._tempdir: tempfile.TemporaryDirectory[str] | None = None
        if workdir is None:
            self._tempdir = tempfile.TemporaryDirectory(prefix="mosquitto-")
            workdir = Path(self._tempdir.name)
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.anonymous = anonymous
        self.acl_file = acl_file
        self.tls = tls
        self.require_client_cert = require_client_cert
        self.extra_config = extra_config
        self.start_timeout_s = start_timeout_s
        self.port = free_port(self.host)
        self.users: dict[str, BrokerUser] = (
            {}
            if anonymous
            else {name: BrokerUser(name, secrets.token_urlsafe(12)) for name in users}
        )
        self.config_file = self.workdir / "mosquitto.conf"
        self.log_file = self.workdir / "mosquitto.log"
        self.ca_file: Path | None = None
        self._ca: object | None = None  # trustme.CA, kept to issue client certificates
        self._process: subprocess.Popen[bytes] | None = None
        self._configured = False

    # ------------------------------------------------------------------ set-up

    def credentials(self, name: str) -> tuple[str, str]:
        """``(username, password)`` of one of :attr:`users`."""
        user = self.users[name]
        return user.username, user.password

    def client_certificate(self, name: str) -> tuple[Path, Path]:
        """A client certificate (``cert_file``, ``key_file``) signed by the test CA."""
        if self._ca is None:
            msg = "client_certificate() needs MosquittoBroker(tls=True)"
            raise BrokerError(msg)
        import trustme

        assert isinstance(self._ca, trustme.CA)
        cert = self._ca.issue_cert(f"{name}@clients.test")
        cert_file = self.workdir / f"{name}.crt"
        key_file = self.workdir / f"{name}.key"
        cert.cert_chain_pems[0].write_to_path(str(cert_file))
        cert.private_key_pem.write_to_path(str(key_file))
        return cert_file, key_file

    def _configure(self) -> None:
        if not MOSQUITTO.exists() or shutil.which("mosquitto_passwd") is None:
            raise MosquittoNotInstalledError(INSTALL_HINT)
        lines = [
            "per_listener_settings false",
            "persistence false",
            f"log_dest file {self.log_file}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            "log_timestamp true",
            # Forward each message at once (no Nagle delay): what docs/mqtt.md recommends.
            "set_tcp_nodelay true",
            # When run as root mosquitto drops to this user; stay who we are so it can
            # read the files in the temp folder.
            f"user {getpass.getuser()}",
        ]
        if self.anonymous:
            lines.append("allow_anonymous true")
        else:
            passwd = self.workdir / "passwd"
            passwd.unlink(missing_ok=True)
            for index, user in enumerate(self.users.values()):
                create = ["-c"] if index == 0 else []
                subprocess.run(
                    ["mosquitto_passwd", *create, "-b", str(passwd), user.username, user.password],
                    check=True,
                    capture_output=True,
                )
            passwd.chmod(0o600)
            lines += ["allow_anonymous false", f"password_file {passwd}"]
            lines.append(f"acl_file {self.acl_file}")
        lines.append(f"listener {self.port} {self.host}")
        if self.tls:
            lines += self._make_tls()
        if self.extra_config:
            lines.append(self.extra_config)
        self.config_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
        self._configured = True

    def _make_tls(self) -> list[str]:
        import trustme

        ca = trustme.CA()
        self._ca = ca
        server = ca.issue_cert("127.0.0.1", "localhost")
        self.ca_file = self.workdir / "ca.crt"
        cert_file = self.workdir / "server.crt"
        key_file = self.workdir / "server.key"
        ca.cert_pem.write_to_path(str(self.ca_file))
        server.cert_chain_pems[0].write_to_path(str(cert_file))
        server.private_key_pem.write_to_path(str(key_file))
        return [
            f"cafile {self.ca_file}",
            f"certfile {cert_file}",
            f"keyfile {key_file}",
            f"require_certificate {'true' if self.require_client_cert else 'false'}",
        ]

    # ------------------------------------------------------------------ process

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start mosquitto (on the same port as before) and wait until it accepts TCP."""
        if self.running:
            return
        if not self._configured:
            self._configure()
        self._process = subprocess.Popen(
            [str(MOSQUITTO), "-c", str(self.config_file)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                stderr = (
                    self._process.stderr.read().decode(errors="replace")
                    if self._process.stderr
                    else ""
                )
                msg = (
                    f"mosquitto exited with code {self._process.returncode} at start\n"
                    f"stderr: {stderr}\nlog:\n{self.log_text()}"
                )
                self._process = None
                raise BrokerError(msg)
            if port_accepts(self.host, self.port):
                return
            time.sleep(0.02)  # polling the port; not a correctness sleep
        self.stop()
        msg = (
            f"mosquitto did not accept connections on {self.host}:{self.port} within "
            f"{self.start_timeout_s} s\nlog:\n{self.log_text()}"
        )
        raise BrokerError(msg)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop mosquitto (SIGTERM, then SIGKILL) and wait until the process is gone."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout_s)
        if process.stderr is not None:
            process.stderr.close()

    def kill(self) -> None:
        """Kill mosquitto with SIGKILL (no clean goodbye to the clients)."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
        self.stop()

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_text(self) -> str:
        """The broker's log so far (for failure messages)."""
        try:
            return self.log_file.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return "(no log yet)"

    def close(self) -> None:
        self.stop()
        if self._tempdir is not None:
            self._tempdir.cleanup()
            self._tempdir = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<MosquittoBroker {self.host}:{self.port} {state} workdir={self.workdir}>"


def start_or_fail(broker: MosquittoBroker) -> MosquittoBroker:
    """Start ``broker`` for a pytest fixture: without mosquitto installed the test FAILS
    (not skips) with :data:`INSTALL_HINT`."""
    import pytest

    try:
        broker.start()
    except MosquittoNotInstalledError as exc:
        pytest.fail(str(exc), pytrace=False)
    return broker
