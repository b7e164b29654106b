"""The gates of the safety core cover every module of it.

``.ci/safety-core.txt`` lists the modules of the safety core: ``./dev.sh test`` holds each at
100 % branch coverage and ``.ci/mutation.sh`` mutates each by default. A rule module added to
``controller/rules/`` without being listed there would escape both gates, so this test
classifies every module of the folder. Each listed module also has its row in docs/safety.md
("Where the rules live") and names its rule ids in its docstring.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORE_LIST = ROOT / ".ci" / "safety-core.txt"

#: Modules of controller/rules/ that are not part of decide(), and where they are checked.
NOT_IN_THE_CORE = {
    "controller/rules/__init__.py": "the package docstring",
    "controller/rules/model.py": "data types only: exercised by every core test",
    "controller/rules/config_rules.py": "dev.sh covers it separately (SR-CONFIG-*)",
    "controller/rules/transitions.py": "dev.sh covers it separately (SR-MODE-3)",
    "controller/rules/reload.py": "the reload merge (SR-RELOAD-1): tests/core/test_reload_merge.py",
}


def _listed() -> list[str]:
    lines = CORE_LIST.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_every_rules_module_is_in_the_core_list_or_explained() -> None:
    present = {p.relative_to(ROOT).as_posix() for p in (ROOT / "controller/rules").glob("*.py")}
    listed = _listed()
    assert len(listed) == len(set(listed)), "a module is listed twice"
    assert sorted(set(listed) - present) == [], "listed modules that do not exist"
    unclassified = present - set(listed) - set(NOT_IN_THE_CORE)
    assert sorted(unclassified) == [], "add new rule modules to .ci/safety-core.txt"
    assert sorted(set(listed) & set(NOT_IN_THE_CORE)) == []
    assert sorted(set(NOT_IN_THE_CORE) - present) == [], "stale NOT_IN_THE_CORE entries"


def test_both_gates_read_the_core_list() -> None:
    dev = (ROOT / "dev.sh").read_text(encoding="utf-8")
    mutation = (ROOT / ".ci" / "mutation.sh").read_text(encoding="utf-8")
    assert ".ci/safety-core.txt" in dev
    assert "--cov-fail-under=100" in dev
    assert "--cov=controller.rules.config_rules" in dev
    assert "--cov=controller.rules.transitions" in dev
    assert ".ci/safety-core.txt" in mutation


def test_safety_doc_says_where_each_core_module_lives() -> None:
    """docs/safety.md, "Where the rules live": one row per module of the core."""
    text = (ROOT / "docs" / "safety.md").read_text(encoding="utf-8")
    section = text[text.index("## Where the rules live") :]
    section = section[: section.index("\n## ")]
    rows = set(re.findall(r"^\| `([a-z_]+\.py)` \|", section, flags=re.MULTILINE))
    assert rows == {Path(path).name for path in _listed()}


def test_every_core_module_names_its_rules() -> None:
    """Each module's docstring says what it holds and which rule ids live there."""
    no_rules = {"controller/rules/tick.py"}  # the working record of a tick: no rule of its own
    for path in _listed():
        doc = ast.get_docstring(ast.parse((ROOT / path).read_text(encoding="utf-8")))
        assert doc, f"{path} has no module docstring"
        if path not in no_rules:
            assert re.search(r"\bSR-[A-Z]+", doc), f"{path}: its docstring names no rule id"
