"""One firmware process per implementation for the whole run; a fresh boot for every test.

The ``fw`` fixture is parametrised over the three implementations of the contract
(docs/firmware-safety.md): ``python`` (``treadmill sim``), ``native`` (the C core built for
this machine) and ``avr`` (the firmware ELF in the simavr harness). pytest groups the tests
by implementation, so each process starts once. Before each test the firmware is brought to
rest and rebooted (``inject reboot``): every test starts from a boot, with no handshake.

An implementation that is not built is skipped with its reason, except when
``TREADMILL_CONFORMANCE_REQUIRED=1`` (set by ``./dev.sh test``, i.e. in CI): then it fails.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from bench.firmware_runner import Implementation, Session, implementations, session

_IMPLS = {impl.name: impl for impl in implementations()}


@pytest.fixture(scope="session", params=list(_IMPLS))
def fw_session(request: pytest.FixtureRequest) -> Iterator[Session]:
    impl: Implementation = _IMPLS[request.param]
    if impl.missing is not None:
        if os.environ.get("TREADMILL_CONFORMANCE_REQUIRED") == "1":
            pytest.fail(f"conformance: implementation {impl.name} cannot run: {impl.missing}")
        pytest.skip(f"IMPLEMENTATION {impl.name.upper()} NOT TESTED: {impl.missing}")
    with session(impl) as s:
        yield s


@pytest.fixture
def fw(fw_session: Session) -> Session:
    """The implementation under test, freshly rebooted, belt at rest, key closed."""
    fw_session.fresh()
    return fw_session
