"""One errors module: a common base, and a fitting builtin as the second base of each error."""

from __future__ import annotations

import doctest
import inspect

import controller.errors
from controller.errors import TreadmillError

ERRORS = [
    cls
    for _, cls in inspect.getmembers(controller.errors, inspect.isclass)
    if issubclass(cls, BaseException)
]


def test_every_error_has_the_common_base_and_a_builtin() -> None:
    assert len(ERRORS) >= 15
    for cls in ERRORS:
        assert issubclass(cls, TreadmillError), cls
        if cls is TreadmillError:
            continue
        builtins = [b for b in cls.__mro__ if b.__module__ == "builtins"]
        assert builtins[0] is not Exception, f"{cls.__name__} has no builtin besides Exception"


def test_every_error_is_listed_and_documented() -> None:
    assert sorted(controller.errors.__all__) == sorted(
        [c.__name__ for c in ERRORS] + ["ConfigIssue"]
    )
    for cls in ERRORS:
        assert cls.__doc__, cls


def test_the_examples_in_the_errors_module_run() -> None:
    result = doctest.testmod(controller.errors)
    assert result.attempted > 0
    assert result.failed == 0


def test_no_public_error_is_defined_outside_the_errors_module() -> None:
    """Private control-flow signals (``_LinkDownError``) stay in their module; every error a
    caller may see lives in controller/errors.py."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    outside = []
    for package in ("controller", "firmware_bridge"):
        for path in sorted((root / package).rglob("*.py")):
            if path.name == "errors.py":
                continue
            for node in ast.parse(path.read_text(encoding="utf-8")).body:
                if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                    bases = [b.id for b in node.bases if isinstance(b, ast.Name)]
                    if any(b.endswith(("Error", "Exception")) for b in bases):
                        outside.append(f"{path.relative_to(root)}: {node.name}")
    assert outside == [], "define these in controller/errors.py"


def _exception_classes_outside_the_errors_module() -> list[tuple[str, str]]:
    """(module, class) of every class defined outside controller/errors.py whose base is
    named like an error (``...Error``, ``...Exception``), private ones included."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    found = []
    for package in ("controller", "firmware_bridge"):
        for path in sorted((root / package).rglob("*.py")):
            if path.name == "errors.py":
                continue
            for node in ast.parse(path.read_text(encoding="utf-8")).body:
                if isinstance(node, ast.ClassDef):
                    bases = [b.id for b in node.bases if isinstance(b, ast.Name)]
                    if any(b.endswith(("Error", "Exception")) for b in bases):
                        module = ".".join(path.relative_to(root).with_suffix("").parts)
                        found.append((module, node.name))
    return found


def test_private_control_flow_errors_have_the_common_base_too() -> None:
    """A private signal (``_LinkDownError``, ``_ShutdownBeforeReadyError``,
    ``_BadPayloadError``) also derives from TreadmillError, so ``except TreadmillError``
    at any edge sees every error the project raises on purpose."""
    import importlib

    private = _exception_classes_outside_the_errors_module()
    assert len(private) >= 3, private
    outside = [
        f"{module}.{name}"
        for module, name in private
        if not issubclass(getattr(importlib.import_module(module), name), TreadmillError)
    ]
    assert outside == [], "derive these from controller.errors.TreadmillError"
