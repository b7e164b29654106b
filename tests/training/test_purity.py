"""The training program's decision modules stay pure: no I/O, clock, randomness or logging."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "controller" / "training"
FORBIDDEN = {
    "asyncio",
    "logging",
    "os",
    "random",
    "socket",
    "sqlite3",
    "threading",
    "time",
    "uuid",
    "serial",
    "aiomqtt",
    "gpiozero",
}


def imported_roots(path: Path) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("module", ["sessions.py", "progression.py", "config.py", "events.py"])
def test_pure_modules_import_no_io(module: str) -> None:
    assert imported_roots(PACKAGE / module) & FORBIDDEN == set()


def test_the_pure_modules_import_only_the_model_and_each_other() -> None:
    allowed_internal = {
        "controller.rules.model",
        "controller.training.config",
        "controller.training.sessions",
    }
    for module in ("sessions.py", "progression.py", "config.py", "events.py"):
        tree = ast.parse((PACKAGE / module).read_text())
        internal = {
            node.module
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("controller")
        }
        assert internal <= allowed_internal, module
