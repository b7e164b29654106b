"""Broker conditions the benchmarks run under: a healthy broker, a flooded one, none at all.

* ``healthy``: a real mosquitto on a free port, with the documented users and ACL
  (docs/examples/mosquitto.acl); the service logs in as ``controller``.
* ``flooded``: the same broker, plus a separate flooder process (:mod:`bench.flood`) logged in
  as ``trainer`` publishing thousands of malformed and valid-but-harmless commands a second to
  ``treadmill/<id>/cmd/...``.
* ``down``: the service's ``mqtt.port`` is a port nobody listens on; the publisher retries
  with backoff for the whole run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from bench.rig import MqttTarget
from tests.broker import MosquittoBroker, free_port

__all__ = ["CONDITIONS", "ConditionEnv", "broker_condition", "write_secret"]

CONDITIONS: dict[str, str] = {
    "healthy": "mosquitto up, no extra traffic",
    "flooded": "mosquitto up, flooder publishing malformed and harmless commands",
    "down": "no broker (mqtt.port is a dead port)",
}


@dataclass
class ConditionEnv:
    """What a benchmark needs to know about the condition it runs under."""

    name: str
    mqtt: MqttTarget
    flood_rate_per_s: float = 0.0
    # (host, port, username, password) of the ``dashboard`` account, which may only press
    # Stop (cmd/stop); None when there is no broker.
    stop_sender: tuple[str, int, str, str] | None = None
    flooder: dict[str, object] = field(default_factory=dict)  # filled in when it ends


def write_secret(path: Path, text: str) -> None:
    """Write a credentials file readable by its owner only."""
    path.write_text(text)
    path.chmod(0o600)


@contextlib.asynccontextmanager
async def broker_condition(
    name: str, workdir: Path, *, flood_rate_per_s: float = 2000.0, prefix: str = "treadmill/demo"
) -> AsyncIterator[ConditionEnv]:
    """Set up the condition ``name`` (see :data:`CONDITIONS`) for the duration of the block."""
    if name not in CONDITIONS:
        raise ValueError(f"unknown condition {name!r}: use one of {', '.join(CONDITIONS)}")
    await asyncio.to_thread(workdir.mkdir, parents=True, exist_ok=True)
    if name == "down":
        yield ConditionEnv(name, MqttTarget("127.0.0.1", free_port()))
        return
    broker = MosquittoBroker(workdir / "mosquitto")
    await asyncio.to_thread(broker.start)
    try:
        user, password = broker.credentials("controller")
        credentials = workdir / "controller.credentials"
        await asyncio.to_thread(write_secret, credentials, f"{user}:{password}\n")
        target = MqttTarget(broker.host, broker.port, credentials)
        stop_sender = (broker.host, broker.port, *broker.credentials("dashboard"))
        if name == "healthy":
            yield ConditionEnv(name, target, stop_sender=stop_sender)
            return
        flood_user, flood_password = broker.credentials("trainer")
        password_file = workdir / "flooder.password"
        await asyncio.to_thread(write_secret, password_file, flood_password)
        flooder = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.flood",
            "--host",
            broker.host,
            "--port",
            str(broker.port),
            "--username",
            flood_user,
            "--password-file",
            str(password_file),
            "--prefix",
            prefix,
            "--rate",
            str(flood_rate_per_s),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        env = ConditionEnv(name, target, flood_rate_per_s=flood_rate_per_s, stop_sender=stop_sender)
        try:
            yield env
        finally:
            if flooder.returncode is None:
                flooder.terminate()
            out, err = await asyncio.wait_for(flooder.communicate(), timeout=20)
            lines = out.decode(errors="replace").strip().splitlines()
            try:
                env.flooder = json.loads(lines[-1]) if lines else {}
            except json.JSONDecodeError:
                env.flooder = {"error": out.decode(errors="replace")[-500:]}
            if flooder.returncode not in (0, None):
                env.flooder["stderr"] = err.decode(errors="replace")[-500:]
    finally:
        await asyncio.to_thread(broker.close)
