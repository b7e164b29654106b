"""Read configuration YAML into plain data, remembering where every key was written.

The loader is strict on purpose; a configuration file decides how fast a belt may run
under a person, so anything ambiguous is an error rather than a guess:

* syntax errors, a second document, and **duplicate keys** (which plain PyYAML silently
  resolves to the last one) are errors with the line and column;
* anchors, aliases and merge keys (``&a``, ``*a``, ``<<``) are refused: every value is
  written where it applies, so what you read is what the controller uses;
* mapping keys must be text (or whole numbers, for tables keyed by stage number); a key such
  as ``yes:`` or ``on:``, which YAML 1.1 reads as a boolean, is refused with a hint to quote it;
* explicit collection tags (``!!set``, ``!!omap``) and unknown tags are refused;
* nesting deeper than :data:`MAX_DEPTH` and files larger than :data:`MAX_CONFIG_BYTES` are
  refused.

The result is a :class:`YamlDocument`: the data (dicts, lists, scalars) and a map from each
key path, such as ``("stages", 2, "grip", "grace_ms")``, to its 1-based line and column.
:mod:`controller.settings.config` validates the data and uses the map to put a line number on every
problem.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from controller.errors import ConfigError, ConfigIssue

#: sysexits.h EX_CONFIG: the exit status of every command that refuses a configuration.
EXIT_CONFIG = 78

#: A configuration file is a few kilobytes; anything this large is not one.
MAX_CONFIG_BYTES = 1024 * 1024

#: Deepest nesting a configuration may have (the schema itself needs 5).
MAX_DEPTH = 16

#: One step in a key path: a mapping key (text, or a whole number) or a list index.
KeyPart = str | int
KeyPath = tuple[KeyPart, ...]

_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_STR_TAG = "tag:yaml.org,2002:str"
_INT_TAG = "tag:yaml.org,2002:int"
_BOOL_TAG = "tag:yaml.org,2002:bool"
_NULL_TAG = "tag:yaml.org,2002:null"
_MERGE_TAG = "tag:yaml.org,2002:merge"


def format_key_path(path: Sequence[KeyPart]) -> str:
    """``("stages", 2, "grip", "grace_ms")`` -> ``"stages[2].grip.grace_ms"``.

    The empty path (the document itself) is ``"(top level)"``. List indices start at 0, so
    ``stages[0]`` is stage 1.
    """
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text or "(top level)"


@dataclass(frozen=True)
class YamlDocument:
    """Parsed configuration data and the position of every key in the source text."""

    source: str
    data: Any
    positions: Mapping[KeyPath, tuple[int, int]] = field(default_factory=dict)

    def position(self, path: Sequence[KeyPart]) -> tuple[int, int]:
        """Line and column of ``path``, or of its nearest parent that exists in the file."""
        parts = tuple(path)
        while parts:
            found = self.positions.get(parts)
            if found is not None:
                return found
            parts = parts[:-1]
        return self.positions.get((), (1, 1))

    def issue(self, path: Sequence[KeyPart], message: str) -> ConfigIssue:
        """A :class:`ConfigIssue` at ``path`` (placed at its nearest existing parent)."""
        line, col = self.position(path)
        return ConfigIssue(self.source, line, col, format_key_path(path), message)


def read_config_text(path: Path) -> str:
    """The text of the configuration file at ``path`` (UTF-8, at most 1 MiB).

    Raises :class:`ConfigError` naming the file and the reason when it cannot be read.
    """
    source = str(path)
    try:
        with path.open("rb") as stream:
            raw = stream.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(
            [ConfigIssue(source, 0, 0, "", f"cannot read the configuration file: {reason}")]
        ) from exc
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(
            [
                ConfigIssue(
                    source,
                    0,
                    0,
                    "",
                    f"the file is larger than {MAX_CONFIG_BYTES} bytes: this is not a "
                    "treadmill configuration",
                )
            ]
        )
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        before = raw[: exc.start]
        line = before.count(b"\n") + 1
        col = exc.start - (before.rfind(b"\n") + 1) + 1
        raise ConfigError(
            [
                ConfigIssue(
                    source,
                    line,
                    col,
                    "(file)",
                    f"byte 0x{raw[exc.start]:02x} is not valid UTF-8: save the file as UTF-8",
                )
            ]
        ) from exc


def parse_yaml(text: str, source: str) -> YamlDocument:
    """Parse ``text`` (named ``source`` in messages) into a :class:`YamlDocument`.

    Raises :class:`ConfigError` for syntax errors, duplicate keys and the constructs listed
    in the module docstring. Never raises anything else for any input text.
    """
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(
            [ConfigIssue(source, 0, 0, "", f"the text is longer than {MAX_CONFIG_BYTES} bytes")]
        )
    try:
        loader = yaml.SafeLoader(text)
    except yaml.YAMLError as exc:  # ReaderError: a character YAML does not allow
        raise ConfigError([_reader_issue(source, text, exc)]) from exc
    try:
        try:
            node = loader.get_single_node()
        except yaml.MarkedYAMLError as exc:
            raise ConfigError([_syntax_issue(source, exc)]) from exc
        except yaml.YAMLError as exc:  # ReaderError: a character YAML does not allow
            raise ConfigError([_reader_issue(source, text, exc)]) from exc
        except RecursionError as exc:
            raise ConfigError(
                [
                    ConfigIssue(
                        source,
                        1,
                        1,
                        "(file)",
                        f"the YAML is nested far deeper than the {MAX_DEPTH} levels a "
                        "configuration may have",
                    )
                ]
            ) from exc
        if node is None:
            raise ConfigError(
                [
                    ConfigIssue(
                        source,
                        1,
                        1,
                        "(top level)",
                        "the file is empty: start from config/treadmill.yaml",
                    )
                ]
            )
        builder = _Builder(loader, source)
        data = builder.build(node, (), 0)
        if builder.issues:
            raise ConfigError(builder.issues)
        return YamlDocument(source=source, data=data, positions=builder.positions)
    finally:
        loader.dispose()


def _one_based(mark: yaml.Mark | None) -> tuple[int, int]:
    if mark is None:
        return (1, 1)
    return (mark.line + 1, mark.column + 1)


def _syntax_issue(source: str, exc: yaml.MarkedYAMLError) -> ConfigIssue:
    mark = exc.problem_mark or exc.context_mark
    line, col = _one_based(mark)
    what = exc.problem or exc.context or "invalid YAML"
    message = f"YAML syntax error: {what}"
    if exc.context and exc.problem and exc.context_mark is not None:
        context_line, _ = _one_based(exc.context_mark)
        message += f" ({exc.context} at line {context_line})"
    return ConfigIssue(source, line, col, "(syntax)", message)


def _reader_issue(source: str, text: str, exc: yaml.YAMLError) -> ConfigIssue:
    position = getattr(exc, "position", 0)
    position = position if isinstance(position, int) and 0 <= position <= len(text) else 0
    before = text[:position]
    line = before.count("\n") + 1
    col = position - (before.rfind("\n") + 1) + 1
    character = getattr(exc, "character", None)
    if isinstance(character, str) and len(character) == 1:
        character = ord(character)
    shown = f"U+{character:04X}" if isinstance(character, int) else "?"
    return ConfigIssue(
        source,
        line,
        col,
        "(syntax)",
        f"YAML syntax error: character {shown} is not allowed in a YAML file",
    )


class _Builder:
    """Turns composed nodes into plain data, recording positions and refusing ambiguity."""

    def __init__(self, loader: yaml.SafeLoader, source: str) -> None:
        self._loader = loader
        self._source = source
        self._seen: set[int] = set()
        self.positions: dict[KeyPath, tuple[int, int]] = {}
        self.issues: list[ConfigIssue] = []

    def _issue(self, node: Node, path: KeyPath, message: str) -> None:
        """A problem with a key: placed at the key node itself."""
        line, col = _one_based(node.start_mark)
        self.issues.append(ConfigIssue(self._source, line, col, format_key_path(path), message))

    def _value_issue(self, node: Node, path: KeyPath, message: str) -> None:
        """A problem with a value: placed at the key (or list item) that holds it, like
        every other position in the map. For an alias the node's own mark would point at
        the anchor, not at the use."""
        line, col = self.positions.get(path) or _one_based(node.start_mark)
        self.issues.append(ConfigIssue(self._source, line, col, format_key_path(path), message))

    def build(self, node: Node, path: KeyPath, depth: int) -> Any:
        if not path:
            self.positions[()] = _one_based(node.start_mark)
        if id(node) in self._seen:
            self._value_issue(
                node,
                path,
                "anchors and aliases (&name / *name) are not supported: write the value out "
                "in full where it is used",
            )
            return None
        self._seen.add(id(node))
        if depth > MAX_DEPTH:
            self._value_issue(
                node, path, f"nested deeper than {MAX_DEPTH} levels: this is not the schema"
            )
            return None
        if isinstance(node, MappingNode):
            return self._mapping(node, path, depth)
        if isinstance(node, SequenceNode):
            if node.tag != _SEQ_TAG:
                self._value_issue(node, path, f"YAML tag {node.tag!r} is not supported here")
                return None
            items: list[Any] = []
            for index, item in enumerate(node.value):
                self.positions[(*path, index)] = _one_based(item.start_mark)
                items.append(self.build(item, (*path, index), depth + 1))
            return items
        if isinstance(node, ScalarNode):
            return self._scalar(node, path)
        self._value_issue(node, path, f"unexpected YAML node {type(node).__name__}")
        return None

    def _scalar(self, node: ScalarNode, path: KeyPath) -> Any:
        try:
            return self._loader.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError, TypeError, OverflowError) as exc:
            # PyYAML lets ValueError escape for e.g. "2024-13-01" (a timestamp with month 13)
            # or "!!int abc"; either way the text cannot be read as the value it claims to be.
            problem = getattr(exc, "problem", None) or str(exc) or type(exc).__name__
            self._value_issue(node, path, f"cannot read {node.value!r}: {problem}")
            return None

    def _mapping(self, node: MappingNode, path: KeyPath, depth: int) -> dict[KeyPart, Any]:
        result: dict[KeyPart, Any] = {}
        if node.tag != _MAP_TAG:
            self._value_issue(node, path, f"YAML tag {node.tag!r} is not supported here")
            return result
        first_seen: dict[KeyPart, tuple[int, int]] = {}
        for key_node, value_node in node.value:
            key = self._key(key_node, path)
            if key is None:
                continue
            here = _one_based(key_node.start_mark)
            key_path = (*path, key)
            if key in first_seen:
                first_line, first_col = first_seen[key]
                self._issue(
                    key_node,
                    key_path,
                    f"duplicate key {key!r}: it is already set at line {first_line}, column "
                    f"{first_col}; keep one of them",
                )
                continue
            first_seen[key] = here
            self.positions[key_path] = here
            result[key] = self.build(value_node, key_path, depth + 1)
        return result

    def _key(self, key_node: Node, path: KeyPath) -> KeyPart | None:
        if not isinstance(key_node, ScalarNode):
            self._issue(key_node, path, "a key must be plain text, not a list or a mapping")
            return None
        if key_node.tag == _MERGE_TAG:
            self._issue(
                key_node,
                path,
                "merge keys (<<) are not supported: write the keys out in full",
            )
            return None
        if key_node.tag == _BOOL_TAG:
            self._issue(
                key_node,
                path,
                f"key {key_node.value!r} is read by YAML as a true/false value, not as text: "
                f'quote it ("{key_node.value}") if it is meant as a name',
            )
            return None
        if key_node.tag == _NULL_TAG:
            self._issue(key_node, path, "a key is empty (null): give it a name")
            return None
        if key_node.tag not in (_STR_TAG, _INT_TAG):
            self._issue(
                key_node,
                path,
                f"key {key_node.value!r} is not text: keys are names such as 'max_kmh' "
                "(or whole numbers in tables keyed by stage)",
            )
            return None
        try:
            key = self._loader.construct_object(key_node, deep=True)
        except (yaml.YAMLError, ValueError, TypeError, OverflowError):
            self._issue(key_node, path, f"cannot read the key {key_node.value!r}")
            return None
        if isinstance(key, str | int) and not isinstance(key, bool):
            return key
        self._issue(key_node, path, f"key {key_node.value!r} is not text")
        return None
