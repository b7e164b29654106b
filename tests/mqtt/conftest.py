"""Fixtures for the MQTT tests: a real mosquitto with passwords and the documented ACL.

* ``mosquitto``: one broker for the whole test session (tests use distinct treadmill
  ids, so retained messages do not mix).
* ``fresh_broker``: a broker of its own, for tests that stop and restart it.
* ``treadmill_id``: an id unique to the test.
* ``figures``: lines printed in the "MQTT measured figures" summary at the end.

Without mosquitto installed these fixtures FAIL (they do not skip) with a message that
says how to install it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.broker import MosquittoBroker, start_or_fail

_FIGURES = pytest.StashKey[list[str]]()


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoBroker]:
    broker = start_or_fail(MosquittoBroker(tmp_path_factory.mktemp("mosquitto")))
    yield broker
    broker.close()


@pytest.fixture
def fresh_broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    broker = start_or_fail(MosquittoBroker(tmp_path / "mosquitto"))
    yield broker
    broker.close()


@pytest.fixture
def treadmill_id(request: pytest.FixtureRequest) -> str:
    digest = hashlib.sha1(request.node.nodeid.encode(), usedforsecurity=False).hexdigest()
    return f"t{digest[:10]}"


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> list[str]:
    return request.config.stash.setdefault(_FIGURES, [])


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    lines = config.stash.get(_FIGURES, [])
    if lines:
        terminalreporter.section("MQTT measured figures")
        for line in lines:
            terminalreporter.write_line(line)
