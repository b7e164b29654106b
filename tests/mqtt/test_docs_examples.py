"""The broker configuration shown in docs/examples/ works as documented.

The ACL is tested everywhere (tests/broker.py uses it as it is); this runs the example
mosquitto.conf with only its paths and ports replaced by test ones.
"""

from __future__ import annotations

import getpass
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest
import trustme

from controller.adapters.mqtt.publisher import MqttPublisher
from controller.adapters.mqtt.settings import TlsSettings
from tests.broker import DEFAULT_ACL, INSTALL_HINT, MOSQUITTO, free_ports, port_accepts
from tests.mqtt.helpers import CommandLog, make_settings, running, wait_until

EXAMPLE_CONF = Path(__file__).resolve().parents[2] / "docs/examples/mosquitto.conf"


class ExampleBroker:
    """mosquitto running docs/examples/mosquitto.conf, paths and ports replaced."""

    host = "127.0.0.1"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.plain_port, self.tls_port = free_ports(2)
        self.port = self.plain_port  # which listener make_settings() connects to
        self.ca_file = workdir / "ca.crt"
        self.process: subprocess.Popen[bytes] | None = None

    def credentials(self, name: str) -> tuple[str, str]:
        return name, f"{name}-password"

    def start(self) -> None:
        if not MOSQUITTO.exists():
            pytest.fail(INSTALL_HINT, pytrace=False)
        ca = trustme.CA()
        server = ca.issue_cert("127.0.0.1", "localhost")
        ca.cert_pem.write_to_path(str(self.ca_file))
        server.cert_chain_pems[0].write_to_path(str(self.workdir / "broker.crt"))
        server.private_key_pem.write_to_path(str(self.workdir / "broker.key"))
        passwd = self.workdir / "passwd"
        for index, name in enumerate(("controller", "dashboard")):
            create = ["-c"] if index == 0 else []
            subprocess.run(
                ["mosquitto_passwd", *create, "-b", str(passwd), *self.credentials(name)],
                check=True,
                capture_output=True,
            )
        replacements = {
            "/etc/mosquitto/passwd": str(passwd),
            "/etc/mosquitto/treadmill.acl": str(DEFAULT_ACL),
            "/etc/mosquitto/certs/ca.crt": str(self.ca_file),
            "/etc/mosquitto/certs/broker.crt": str(self.workdir / "broker.crt"),
            "/etc/mosquitto/certs/broker.key": str(self.workdir / "broker.key"),
            "listener 1883 127.0.0.1": f"listener {self.plain_port} 127.0.0.1",
            # tests stay on loopback
            "listener 8883\n": f"listener {self.tls_port} 127.0.0.1\n",
        }
        text = EXAMPLE_CONF.read_text(encoding="utf-8")
        for old, new in replacements.items():
            assert old in text, f"docs/examples/mosquitto.conf no longer contains {old!r}"
            text = text.replace(old, new)
        text += f"\nlog_dest file {self.workdir / 'mosquitto.log'}\nuser {getpass.getuser()}\n"
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(text, encoding="utf-8")
        self.process = subprocess.Popen([str(MOSQUITTO), "-c", str(conf)])

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)


@pytest.fixture
def example_broker(tmp_path: Path) -> Iterator[ExampleBroker]:
    broker = ExampleBroker(tmp_path)
    broker.start()
    yield broker
    broker.stop()


async def test_example_mosquitto_conf(example_broker: ExampleBroker, treadmill_id: str) -> None:
    broker = example_broker
    await wait_until(
        lambda: (
            port_accepts(broker.host, broker.plain_port)
            and port_accepts(broker.host, broker.tls_port)
        ),
        what="both listeners of the example configuration",
        timeout_s=10,
    )
    plain = MqttPublisher(make_settings(broker, treadmill_id), on_command=CommandLog())
    async with running(plain):
        await wait_until(lambda: plain.stats.connected, what="plain connection")
    broker.port = broker.tls_port
    tls_settings = make_settings(broker, treadmill_id, tls=TlsSettings(broker.ca_file))
    secure = MqttPublisher(tls_settings, on_command=CommandLog())
    async with running(secure):
        await wait_until(lambda: secure.stats.connected, what="TLS connection")
    for port, tls in ((broker.plain_port, None), (broker.tls_port, str(broker.ca_file))):
        anonymous = aiomqtt.Client(
            broker.host, port, tls_params=aiomqtt.TLSParameters(ca_certs=tls) if tls else None
        )
        with pytest.raises(aiomqtt.MqttError, match="ot authori"):
            async with anonymous:
                pass


DOC = Path(__file__).resolve().parents[2] / "docs" / "mqtt.md"
REPO = Path(__file__).resolve().parents[2]
SKIPPED_COMMANDS = ("apt-get ", "systemctl ", "journalctl ", "mosquitto_sub ", "chown ")


def documented_setup_commands() -> list[str]:
    """The shell commands of docs/mqtt.md, "B. mosquitto on the Pi", in the order written."""
    text = DOC.read_text(encoding="utf-8")
    section = text[text.index("### B. mosquitto on the Pi") : text.index("The accounts in the ACL")]
    commands: list[str] = []
    pending = ""
    for raw in section.splitlines():
        line = raw.strip()
        if pending:
            pending += " " + line.rstrip("\\").strip()
            if not line.endswith("\\"):
                commands.append(pending)
                pending = ""
        elif line.startswith("$ "):
            if line.endswith("\\"):
                pending = line[2:].rstrip("\\").strip()
            else:
                commands.append(line[2:])
    return commands


def sandboxed(command: str, root: Path) -> list[str]:
    """``command`` without sudo, on ``root`` instead of /, passwords given on the line."""
    parts: list[str] = []
    for part in command.split("&&"):
        step = part.strip().removeprefix("sudo ").replace("| sudo tee", "| tee")
        if step.startswith(SKIPPED_COMMANDS):
            continue  # package installs, service control and ownership need a real system
        step = step.replace("-o root -g mosquitto ", "")
        step = step.replace("/etc/mosquitto", str(root / "etc/mosquitto"))
        step = step.replace("/opt/treadmill/src", str(REPO))
        if step.startswith("mosquitto_passwd"):
            words = step.split()
            step = " ".join([*words[:-2], "-b", words[-2], words[-1], f"{words[-1]}-pw"])
            step = step.replace("mosquitto_passwd -c -b", "mosquitto_passwd -b -c")
        parts.append(step)
    return parts


def test_broker_setup_steps_work_in_the_order_written(tmp_path: Path) -> None:
    """Run docs/mqtt.md setup B as written (in a sandbox folder): the certificates exist
    before the configuration that needs them, every file is written with the rights the
    commands have, and mosquitto starts with the result."""
    if not MOSQUITTO.exists():
        pytest.fail(INSTALL_HINT, pytrace=False)
    (tmp_path / "etc/mosquitto/conf.d").mkdir(parents=True)
    commands = documented_setup_commands()
    assert any(c.startswith("sudo openssl x509") for c in commands)
    for command in commands:  # a shell redirection runs as the user, not as root
        assert not re.search(r"(?<![|&])>\s*(?!/dev/null)\S", command), command
    restart = next(i for i, c in enumerate(commands) if "systemctl restart mosquitto" in c)
    assert restart > max(i for i, c in enumerate(commands) if "broker.crt" in c)
    script = ["set -euo pipefail"]
    for command in commands[:restart]:
        script.extend(sandboxed(command, tmp_path))
    done = subprocess.run(
        ["bash", "-c", "\n".join(script)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    certs = tmp_path / "etc/mosquitto/certs"
    subprocess.run(
        ["openssl", "verify", "-CAfile", str(certs / "ca.crt"), str(certs / "broker.crt")],
        check=True,
        capture_output=True,
    )
    conf = tmp_path / "etc/mosquitto/conf.d/treadmill.conf"
    plain_port, tls_port = free_ports(2)
    text = conf.read_text(encoding="utf-8").replace(
        "/etc/mosquitto", str(tmp_path / "etc/mosquitto")
    )
    text = text.replace("listener 1883 127.0.0.1", f"listener {plain_port} 127.0.0.1")
    text = text.replace("listener 8883\n", f"listener {tls_port} 127.0.0.1\n")
    conf.write_text(text + f"\nuser {getpass.getuser()}\n", encoding="utf-8")
    process = subprocess.Popen([str(MOSQUITTO), "-c", str(conf)], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while not (port_accepts("127.0.0.1", plain_port) and port_accepts("127.0.0.1", tls_port)):
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            assert time.monotonic() < deadline, "mosquitto did not open both listeners"
            time.sleep(0.05)  # polling the listeners until they answer
    finally:
        process.terminate()
        process.wait(10)
