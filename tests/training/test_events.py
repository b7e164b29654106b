"""The training program's events: worded in one module, and every kind one a scenario can expect."""

from __future__ import annotations

import ast
from pathlib import Path

from controller.tools.scenario_spec import KNOWN_EVENT_KINDS

PACKAGE = Path(__file__).resolve().parents[2] / "controller" / "training"


def event_calls(path: Path) -> list[ast.Call]:
    """The ``Event(...)`` constructions in one module."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "Event"
    ]


def test_every_training_event_kind_is_known_to_the_scenario_checker() -> None:
    kinds: set[str] = set()
    for path in sorted(PACKAGE.glob("*.py")):
        for call in event_calls(path):
            kind = call.args[0] if call.args else None
            assert isinstance(kind, ast.Constant), f"{path.name}:{call.lineno}: kind not a literal"
            assert isinstance(kind.value, str)
            kinds.add(kind.value)
    assert {"session_started", "unlock_refused", "storage_error"} <= kinds  # the scan sees them
    assert kinds - KNOWN_EVENT_KINDS == set(), "add these kinds to scenario_spec.KNOWN_EVENT_KINDS"


def test_the_program_words_no_event_itself() -> None:
    calls = event_calls(PACKAGE / "program.py")
    assert [call.lineno for call in calls] == [], "build the program's events in events.py"
