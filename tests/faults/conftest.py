"""Fixtures of the fault matrix (docs/faults.md).

Every row runs the real ``treadmill run`` process against the simulated firmware on a real
pseudo-terminal (bench/rig.py) and checks the safe outcome at the simulated belt and on the
wire. All rows share one event loop (``loop_scope="session"``) so that the two minute-long
corruption rows can run in the background while the short rows run in the foreground; the
tests that collect their results are moved to the end of the run.

Set ``TREADMILL_FAULT_REPORT=/path/report.json`` to get the measured figures of every row
(stop times, distances, peak speeds) as JSON; docs/faults.md quotes them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.faults.corruption import BackgroundRows, corruption_row

BACKGROUND_MARK = "fault_background"
CORRUPTION_ROWS = {"corrupt_1pct": (1.0, 11), "corrupt_10pct": (10.0, 12)}  # (pct, seed)


class Observations:
    """Figures measured by the rows, keyed by test name."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, Any]] = {}

    def record(self, test: str, **figures: Any) -> None:
        self.rows.setdefault(test, {}).update(figures)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{BACKGROUND_MARK}: a fault-matrix row whose run started in the background; "
        "collected last so that it overlaps with the other rows",
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Within this directory, run the tests that collect background rows last."""
    here = Path(__file__).parent
    positions = [i for i, item in enumerate(items) if here in item.path.parents]
    mine = [items[i] for i in positions]
    mine.sort(key=lambda item: item.get_closest_marker(BACKGROUND_MARK) is not None)
    for position, item in zip(positions, mine, strict=True):
        items[position] = item


@pytest.fixture(scope="session")
def background_rows(request: pytest.FixtureRequest) -> Iterator[BackgroundRows]:
    """The minute-long rows, running in a thread of their own (tests/faults/corruption.py)."""

    def factory(pct: float, seed: int) -> Any:
        return lambda: corruption_row(pct, seed=seed)

    rows = BackgroundRows(
        {name: factory(pct, seed) for name, (pct, seed) in CORRUPTION_ROWS.items()}
    )
    yield rows
    rows.close()


@pytest.fixture(autouse=True)
def _start_background_rows(request: pytest.FixtureRequest, background_rows: BackgroundRows) -> None:
    """Start the background rows with the first row of the matrix, if any will be collected."""
    if any(item.get_closest_marker(BACKGROUND_MARK) for item in request.session.items):
        background_rows.start()


@pytest.fixture(scope="session")
def observations() -> Iterator[Observations]:
    found = Observations()
    yield found
    target = os.environ.get("TREADMILL_FAULT_REPORT")
    if target:
        Path(target).write_text(json.dumps(found.rows, indent=1, sort_keys=True) + "\n")
