"""Module and function size limits: no module over 600 lines, no function over 60 lines.

A module or function above the limit is listed below with the reason it stays whole; the
list is checked both ways, so an entry that is no longer needed fails too.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("firmware_bridge", "controller")
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 60

#: path -> why the module stays whole
LONG_MODULES: dict[str, str] = {
    "firmware_bridge/wire/messages.py": (
        "the wire data dictionary: FIELDS and one encoder/decoder per message, the single "
        "source of the protocol tables in docs/protocol.md"
    ),
    "firmware_bridge/sim/firmware.py": (
        "the simulated firmware: one state machine mirroring every FW-* rule, kept in one file "
        "like the rules it mirrors"
    ),
    "controller/settings/schema.py": (
        "the schema: every section and key of the YAML in one table, so each key's type, "
        "default, range and unit can be read in one place"
    ),
}

#: "path:function" -> why the function stays whole
LONG_FUNCTIONS: dict[str, str] = {
    "firmware_bridge/wire/codec.py:feed": "the byte-stream decoder's state machine, one loop",
    "firmware_bridge/wire/messages.py:_check": "one branch per field kind of the data dictionary",
    "firmware_bridge/wire/messages.py:decode_message": "one branch per message id",
    "controller/adapters/mqtt/telemetry.py:state_payload": (
        "one key per field of the state payload"
    ),
    "controller/adapters/mqtt/publisher.py:run": (
        "the publisher task: connect, serve, reconnect, each failure mode named in one place"
    ),
    "controller/tools/view.py:view_from_state": "one field per line of the terminal view",
    "controller/rules/config_rules.py:_check_second_channel": (
        "one check per rule of the second speed channel (SR-CONFIG-9)"
    ),
    "controller/tools/history.py:write_plot": "one figure: sessions per week, speed per client",
    "controller/tools/scenario_plot.py:write_plot": (
        "one figure: speeds, stage limit, grace windows, steps and events"
    ),
    "firmware_bridge/sim/firmware.py:inject": "one branch per fault the simulator can inject",
    "controller/rules/config_rules.py:_check_machine": (
        "one check per machine-wide limit (SR-CONFIG)"
    ),
    "controller/settings/checks.py:_wiring_problems": "one check per GPIO wiring rule",
    "controller/tools/checkconfig.py:summary": "one line per summary item of check-config",
    "controller/tools/history.py:render_table": "one column per report field",
    "controller/tools/history.py:history_main": "argument handling of one command",
    "controller/tools/scenario.py:run_scenario": "one scenario run: start, steps, wait, collect",
    "controller/tools/scenario_cli.py:scenario_main": "argument handling of one command",
    "controller/tools/scenario_spec.py:_check_names": "one check per name kind in a scenario",
    "controller/tools/verify_report.py:format_markdown": "one section per part of the report",
    "controller/tools/demo.py:_demo": "the demo's parts started in order, each with its message",
    "controller/tools/view.py:render_screen": "one line per row of the terminal view",
    "controller/training/program.py:__init__": "one attribute per piece of program state",
}


def _modules() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def _relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def test_no_module_over_the_limit_without_a_reason() -> None:
    long = {
        _relative(p): n
        for p in _modules()
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    }
    unexplained = {path: n for path, n in long.items() if path not in LONG_MODULES}
    assert unexplained == {}, f"modules over {MAX_MODULE_LINES} lines: split them or say why"
    stale = sorted(set(LONG_MODULES) - set(long))
    assert stale == [], f"no longer over the limit: drop them from LONG_MODULES: {stale}"


def test_no_function_over_the_limit_without_a_reason() -> None:
    long: dict[str, int] = {}
    for path in _modules():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long[f"{_relative(path)}:{node.name}"] = lines
    unexplained = {key: n for key, n in long.items() if key not in LONG_FUNCTIONS}
    assert unexplained == {}, f"functions over {MAX_FUNCTION_LINES} lines: split them or say why"
    stale = sorted(set(LONG_FUNCTIONS) - set(long))
    assert stale == [], f"no longer over the limit: drop them from LONG_FUNCTIONS: {stale}"
