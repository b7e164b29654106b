"""Run one MqttPublisher in a process of its own, for tests that kill or freeze it.

Usage: ``python -m tests.mqtt.publisher_child '<MqttSettings as JSON>'``. Prints
``connected`` on stdout once the publisher is online, then runs until killed.
"""

from __future__ import annotations

import asyncio
import json
import sys

from controller.adapters.mqtt.publisher import MqttPublisher
from controller.adapters.mqtt.settings import MqttSettings
from tests.mqtt.helpers import wait_until


async def _main(settings_json: str) -> None:
    settings = MqttSettings(**json.loads(settings_json))
    publisher = MqttPublisher(settings, on_command=lambda _command: None)
    publisher.publish_state({"ts": "2025-01-01T00:00:00.000Z", "state": "idle"})
    async with asyncio.TaskGroup() as tg:
        tg.create_task(publisher.run(), name="mqtt")
        await wait_until(lambda: publisher.stats.connected, what="connected", timeout_s=20)
        sys.stdout.write("connected\n")
        sys.stdout.flush()


if __name__ == "__main__":
    asyncio.run(_main(sys.argv[1]))
