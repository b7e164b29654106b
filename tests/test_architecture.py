"""The pure modules import only the standard-library modules and project modules allowed here.

The safety core, the shared model, the config rules and the wire codec must stay free of
I/O, clocks, randomness and logging so that every rule can be tested by driving them with
explicit inputs and times (docs/architecture.md, "Module boundaries").
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

STDLIB_ALLOWED = frozenset(
    {
        "__future__",
        "binascii",  # crc_hqx: the frame CRC computed in C, no I/O
        "collections.abc",
        "dataclasses",
        "enum",
        "functools",
        "itertools",
        "math",
        "struct",
        "types",  # MappingProxyType: read-only constant tables, no I/O
        "typing",
    }
)

FORBIDDEN = frozenset(
    {
        "asyncio",
        "serial",
        "serial_asyncio_fast",
        "aiomqtt",
        "gpiozero",
        "logging",
        "time",
        "random",
        "socket",
        "os",
        "threading",
    }
)

# The wire codec modules may use one another and the project's errors, nothing else.
CODEC = frozenset(
    {
        "firmware_bridge.crc",
        "firmware_bridge.codec",
        "firmware_bridge.messages",
        "firmware_bridge.link",
        "firmware_bridge.link_phases",
        "controller.errors",
    }
)

# module -> the project modules it may import
PURE_MODULES: dict[str, frozenset[str]] = {
    "controller/errors.py": frozenset(),
    "controller/model.py": frozenset(),
    "controller/core.py": frozenset({"controller", "controller.model", "controller.transitions"}),
    "controller/transitions.py": frozenset({"controller.model"}),
    # The wire's field table bounds the configuration (SR-CONFIG-3); the codec is pure too.
    "controller/config_rules.py": frozenset({"controller.model", "firmware_bridge.messages"}),
    "firmware_bridge/crc.py": CODEC,
    "firmware_bridge/codec.py": CODEC,
    "firmware_bridge/messages.py": CODEC,
    "firmware_bridge/link.py": CODEC,
    "firmware_bridge/link_phases.py": CODEC,
}


def imported_modules(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """Every module ``path`` imports (absolute dotted names, at any depth), with its line."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = ".".join(path.relative_to(root).with_suffix("").parts[:-1])
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.append((node.lineno, module))
    return found


def _allowed(module: str, project_allowed: frozenset[str]) -> bool:
    return module in STDLIB_ALLOWED or module in project_allowed


def _existing() -> list[str]:
    return [name for name in PURE_MODULES if (ROOT / name).exists()]


@pytest.mark.parametrize("relative", _existing())
def test_pure_module_imports_only_the_allow_list(relative: str) -> None:
    path = ROOT / relative
    bad = [
        f"{relative}:{line} imports {module}"
        for line, module in imported_modules(path)
        if not _allowed(module, PURE_MODULES[relative])
    ]
    assert bad == [], (
        "pure modules may import only "
        f"{sorted(STDLIB_ALLOWED | PURE_MODULES[relative])}; move the I/O to the service"
    )


@pytest.mark.parametrize("relative", _existing())
def test_pure_module_imports_nothing_forbidden(relative: str) -> None:
    path = ROOT / relative
    bad = [
        f"{relative}:{line} imports {module}"
        for line, module in imported_modules(path)
        if module.split(".")[0] in FORBIDDEN
    ]
    assert bad == []


def test_the_core_modules_are_checked() -> None:
    assert {"controller/model.py", "controller/core.py", "controller/config_rules.py"} <= set(
        _existing()
    )


def test_import_walker_sees_every_form(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    sample = package / "mod.py"
    sample.write_text(
        "import os\nimport collections.abc as cabc\nfrom time import monotonic\n"
        "from . import sibling\nfrom .other import thing\n"
        "def f():\n    import socket\n",
        encoding="utf-8",
    )
    modules = [module for _, module in imported_modules(sample, root=tmp_path)]
    assert modules == ["os", "collections.abc", "time", "pkg", "pkg.other", "socket"]
