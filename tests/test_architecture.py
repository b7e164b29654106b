"""The layer table: every module has a layer, imports point down, adapters stay apart, no cycles.

docs/architecture.md shows the same table. From the bottom:

0. pure rules and the wire protocol: no I/O, clocks, randomness or logging, so every rule can
   be tested by driving it with explicit inputs and times;
1. the configuration and the training program;
2. one adapter per device (serial port, GPIO, MQTT, systemd); adapters never import each other;
3. the running service and its wiring;
4. operator and developer tools (simulator, mock panel, demo, scenario runner, verify, monitor,
   history, check-config, broker launcher, the ``treadmill`` command line).

A module imports only modules of its own layer or below. The service loads the simulator and
the mock panel lazily (inside a function) and only when the config asks for them
(``serial.port: sim://``, ``gpio.pin_factory: mock``): those edges are the only upward ones.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("firmware_bridge", "controller")


@dataclass(frozen=True)
class Layer:
    level: int
    name: str
    #: packages (with everything below them) or modules of this layer
    members: tuple[str, ...]
    #: the device adapters: each member is one adapter, and adapters never import each other
    separate: bool = False
    #: the stdlib allow-list below applies, and project imports stay inside ``pure_imports``
    pure: bool = False


LAYERS: tuple[Layer, ...] = (
    Layer(
        0,
        "pure rules and wire protocol",
        ("controller.errors", "controller.rules", "firmware_bridge.wire"),
        pure=True,
    ),
    Layer(
        1,
        "configuration and training program",
        ("controller.settings", "controller.training", "controller.resources"),
    ),
    Layer(
        2,
        "device adapters",
        (
            "firmware_bridge.port",
            "controller.adapters.gpio",
            "controller.adapters.mqtt",
            "controller.adapters.systemd",
        ),
        separate=True,
    ),
    Layer(
        3,
        "running service",
        (
            "controller.runtime.service",  # the Service: the tick and the shutdown
            "controller.runtime.waker",  # the loop's sleep and tick schedule
            "controller.runtime.alarm",  # the loop's precise alarm (a timerfd)
            "controller.runtime.inputs",  # one tick's inputs and the command queues
            "controller.runtime.motion",  # motion commands to the link, last-resort stops
            "controller.runtime.events",  # the event feed: log, publish, fold repeats
            "controller.runtime.reload",  # SIGHUP reload
            "controller.runtime.tasks",  # side tasks, supervision, signals, shutdown verdict
            "controller.runtime.parts",  # opening the parts from the config
            "controller.runtime.reports",  # status line, state payload, counters
            "controller.runtime.stats",  # loop statistics and tick records
            "controller.runtime.wiring",  # the config in each adapter's vocabulary
        ),
    ),
    Layer(4, "tools", ("controller.tools", "controller.cli", "firmware_bridge.sim")),
)

#: Package roots: their ``__init__`` holds a docstring and imports nothing of the project.
ROOTS = frozenset({"controller", "firmware_bridge", "controller.adapters", "controller.runtime"})

#: The only upward imports: lazy (inside a function), where a config asks for a tool.
LAZY_PLUGINS = frozenset(
    {
        ("controller.runtime.parts", "firmware_bridge.sim.pty"),  # serial.port: sim://
        # serial.port: sim:// in key-relay mode (a console-driven treadmill)
        ("controller.runtime.parts", "firmware_bridge.sim.console"),
        ("controller.runtime.service", "controller.tools.mockpanel"),  # gpio.pin_factory: mock
    }
)

#: The pure layer's project imports: the rules use the rules, the wire codec uses the codec,
#: both may raise the project's errors.
PURE_IMPORTS: dict[str, frozenset[str]] = {
    "controller.errors": frozenset(),
    "controller.rules": frozenset({"controller.rules", "controller.errors"}),
    # The wire's field table bounds the configuration (SR-CONFIG-3); the codec is pure too.
    "controller.rules.config_rules": frozenset(
        {"controller.rules", "controller.errors", "firmware_bridge.wire.messages"}
    ),
    # The firmware's stop category per fault code decides the controller's stop (SR-FW-1).
    "controller.rules.firmware_status": frozenset(
        {
            "controller.rules",
            "controller.errors",
            "firmware_bridge.wire.faults",
            "firmware_bridge.wire.messages",
        }
    ),
    "firmware_bridge.wire": frozenset({"firmware_bridge.wire", "controller.errors"}),
}

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


@dataclass(frozen=True)
class Import:
    line: int
    module: str  # absolute dotted name as written (a project module, a package or a library)
    lazy: bool  # inside a function body


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules(root: Path = ROOT) -> dict[str, Path]:
    """Every module of the project packages, by dotted name."""
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            found[_module_name(path, root)] = path
    return found


def imported_modules(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """Every module ``path`` imports (absolute dotted names, at any depth), with its line."""
    return [(imp.line, imp.module) for imp in imports_of(path, root)]


def imports_of(path: Path, root: Path = ROOT, known: frozenset[str] = frozenset()) -> list[Import]:
    """The imports of ``path``; ``from package import module`` names the module when known."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    name = _module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[Import] = []

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = lazy or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.Import):
                found.extend(Import(child.lineno, alias.name, lazy) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")
                    base = base[: len(base) - (child.level - 1)]
                    module = ".".join([*base, child.module] if child.module else base)
                else:
                    module = child.module or ""
                subs = [f"{module}.{a.name}" for a in child.names if f"{module}.{a.name}" in known]
                found.extend(Import(child.lineno, sub, lazy) for sub in subs)
                if len(subs) < len(child.names):
                    found.append(Import(child.lineno, module, lazy))
            visit(child, inner)

    visit(tree, lazy=False)
    return found


def _within(module: str, member: str) -> bool:
    return module == member or module.startswith(member + ".")


def layer_of(module: str) -> tuple[Layer, str] | None:
    """The layer of a project module and the table entry that placed it (longest match)."""
    best: tuple[Layer, str] | None = None
    for layer in LAYERS:
        for member in layer.members:
            if _within(module, member) and (best is None or len(member) > len(best[1])):
                best = (layer, member)
    return best


def _project(module: str, known: dict[str, Path]) -> str | None:
    """The project module an import refers to (a package import refers to its __init__)."""
    while module:
        if module in known:
            return module
        module, _, _ = module.rpartition(".")
    return None


def _graph() -> dict[str, list[tuple[Import, str]]]:
    known = project_modules()
    names = frozenset(known)
    graph: dict[str, list[tuple[Import, str]]] = {}
    for module, path in known.items():
        edges = []
        for imp in imports_of(path, known=names):
            target = _project(imp.module, known)
            if target is not None and target != module:
                edges.append((imp, target))
        graph[module] = edges
    return graph


MODULES = sorted(project_modules())


def test_every_module_has_a_layer() -> None:
    missing = [m for m in MODULES if m not in ROOTS and layer_of(m) is None]
    assert missing == [], (
        f"modules missing from the layer table in tests/test_architecture.py: {missing}; "
        "put each in the folder of its layer (docs/architecture.md) or add it to LAYERS"
    )


def test_package_roots_import_nothing_of_the_project() -> None:
    graph = _graph()
    bad = [f"{root} imports {target}" for root in ROOTS for _, target in graph.get(root, [])]
    assert bad == []


@pytest.mark.parametrize("module", [m for m in MODULES if m not in ROOTS])
def test_imports_point_down_the_layers(module: str) -> None:
    placed = layer_of(module)
    assert placed is not None
    layer, member = placed
    bad = []
    for imp, target in _graph()[module]:
        if target in ROOTS:
            continue
        other = layer_of(target)
        assert other is not None, f"{target} has no layer"
        if other[0].level > layer.level:
            if imp.lazy and (module, target) in LAZY_PLUGINS:
                continue
            bad.append(f"line {imp.line}: {target} ({other[0].name}) is above {layer.name}")
        elif layer.separate and other[0] is layer and other[1] != member:
            bad.append(f"line {imp.line}: adapter {member} imports adapter {other[1]}")
    assert bad == [], f"{module}: " + "; ".join(bad)


def _pure_modules() -> list[str]:
    return [m for m in MODULES if (placed := layer_of(m)) is not None and placed[0].pure]


def _pure_allowed(module: str) -> frozenset[str]:
    """The allow-list of the longest entry of PURE_IMPORTS that holds ``module``."""
    matches = [member for member in PURE_IMPORTS if _within(module, member)]
    return PURE_IMPORTS[max(matches, key=len)] if matches else frozenset()


@pytest.mark.parametrize("module", _pure_modules())
def test_pure_module_imports_only_the_allow_list(module: str) -> None:
    known = project_modules()
    allowed = _pure_allowed(module)
    bad = []
    for imp in imports_of(known[module], known=frozenset(known)):
        if imp.module in STDLIB_ALLOWED:
            continue
        target = _project(imp.module, known)
        if target is not None and any(_within(target, a) for a in allowed):
            continue
        bad.append(f"line {imp.line}: {imp.module}")
    assert bad == [], (
        f"{module} is pure and may import only {sorted(STDLIB_ALLOWED | allowed)}: {bad}; "
        "move the I/O to an adapter or the service"
    )


@pytest.mark.parametrize("module", _pure_modules())
def test_pure_module_imports_nothing_forbidden(module: str) -> None:
    path = project_modules()[module]
    bad = [
        f"line {line}: {name}"
        for line, name in imported_modules(path)
        if name.split(".")[0] in FORBIDDEN
    ]
    assert bad == []


def _cycles(graph: dict[str, list[str]]) -> Iterator[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    counter = [0]

    def strong(node: str) -> Iterator[list[str]]:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, []):
            if nxt not in index:
                yield from strong(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                yield sorted(component)

    for node in sorted(graph):
        if node not in index:
            yield from strong(node)


def test_no_import_cycles() -> None:
    """Every import counts (also lazy and ``TYPE_CHECKING`` ones), except the two plug-ins."""
    edges = {
        module: sorted({t for imp, t in deps if (module, t) not in LAZY_PLUGINS or not imp.lazy})
        for module, deps in _graph().items()
    }
    assert list(_cycles(edges)) == []


def test_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}
    assert list(_cycles(graph)) == [["a", "b", "c"]]


#: The safety core: ``decide()`` in ``core`` and one module per concern it composes.
CORE_MODULES = frozenset(
    f"controller.rules.{name}"
    for name in (
        "channels",
        "commands",
        "core",
        "emergencies",
        "faults",
        "firmware_status",
        "grip",
        "key_relay",
        "link",
        "model",
        "motion",
        "plausibility",
        "readiness",
        "reset",
        "rest",
        "stages",
        "tick",
        "timers",
        "transitions",
    )
)


def test_the_core_modules_are_checked() -> None:
    assert set(_pure_modules()) >= CORE_MODULES


@pytest.mark.parametrize("module", _pure_modules())
def test_pure_module_imports_no_private_name(module: str) -> None:
    """What one module of the pure layer needs from another is public and documented there."""
    tree = ast.parse(project_modules()[module].read_text(encoding="utf-8"))
    bad = [
        f"line {node.lineno}: {node.module}.{alias.name}"
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PACKAGES
        for alias in node.names
        if alias.name.startswith("_")
    ]
    assert bad == [], f"{module} imports private names: {bad}; make them public or move them"


def test_the_lazy_plugins_exist() -> None:
    known = project_modules()
    for module, target in LAZY_PLUGINS:
        assert module in known
        assert target in known


#: Packages held to "no private name imported from another module" (the running service and
#: the firmware bridge, split into modules by concern).
PRIVATE_NAMES_KEPT = ("controller.runtime", "firmware_bridge")


def test_no_private_name_is_imported_from_another_module() -> None:
    """A leading underscore means "this module only": no module of ``PRIVATE_NAMES_KEPT``
    imports another module's private name (``from x import _name``)."""
    known = project_modules()
    bad: list[str] = []
    for module, path in known.items():
        if not any(_within(module, package) for package in PRIVATE_NAMES_KEPT):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                if _project(node.module, known) is None:
                    continue
                bad.extend(
                    f"{module}:{node.lineno}: {node.module}.{alias.name}"
                    for alias in node.names
                    if alias.name.startswith("_") and not alias.name.startswith("__")
                )
    assert bad == []


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
    found = imports_of(sample, root=tmp_path, known=frozenset({"pkg.sibling"}))
    assert [(i.module, i.lazy) for i in found] == [
        ("os", False),
        ("collections.abc", False),
        ("time", False),
        ("pkg.sibling", False),
        ("pkg.other", False),
        ("socket", True),
    ]
