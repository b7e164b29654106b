"""The YAML pass: positions of keys, and everything ambiguous refused with a line and column."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.errors import ConfigError, ConfigIssue
from controller.settings.yaml_loader import (
    MAX_CONFIG_BYTES,
    MAX_DEPTH,
    format_key_path,
    parse_yaml,
    read_config_text,
)


def only_issue(text: str) -> ConfigIssue:
    with pytest.raises(ConfigError) as caught:
        parse_yaml(text, "t.yaml")
    (issue,) = caught.value.problems
    return issue


def test_positions_of_block_flow_and_list_items_are_one_based() -> None:
    doc = parse_yaml(
        "a:\n  b: 1\n  c: {d: 2, e: [3, 4]}\nlist:\n  - x: 1\n  - y: 2\n",
        "t.yaml",
    )
    assert doc.data == {"a": {"b": 1, "c": {"d": 2, "e": [3, 4]}}, "list": [{"x": 1}, {"y": 2}]}
    assert doc.positions[("a",)] == (1, 1)
    assert doc.positions[("a", "b")] == (2, 3)
    assert doc.positions[("a", "c", "d")] == (3, 7)
    assert doc.positions[("a", "c", "e", 1)] == (3, 20)
    assert doc.positions[("list", 1)] == (6, 5)
    assert doc.positions[("list", 1, "y")] == (6, 5)


def test_position_falls_back_to_the_nearest_existing_parent() -> None:
    doc = parse_yaml("a:\n  b:\n    c: 1\n", "t.yaml")
    assert doc.position(("a", "b", "missing", "deeper")) == (2, 3)
    assert doc.position(("nothing",)) == (1, 1)
    issue = doc.issue(("a", "b", "missing"), "is missing")
    assert issue.text() == "t.yaml:2:3: a.b.missing: is missing"


def test_format_key_path() -> None:
    assert format_key_path(("stages", 2, "grip", "grace_ms")) == "stages[2].grip.grace_ms"
    assert format_key_path(()) == "(top level)"
    assert format_key_path(("a", 0, 1)) == "a[0][1]"


def test_duplicate_key_names_both_lines() -> None:
    issue = only_issue("a: 1\nb:\n  c: 1\n  c: 2\n")
    assert (issue.line, issue.col, issue.key_path) == (4, 3, "b.c")
    assert "already set at line 3, column 3" in issue.message


def test_duplicate_key_in_flow_mapping() -> None:
    issue = only_issue("a: {x: 1, x: 2}\n")
    assert (issue.line, issue.col, issue.key_path) == (1, 11, "a.x")


def test_every_duplicate_is_reported() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_yaml("a: 1\na: 2\nb: 1\nb: 2\n", "t.yaml")
    assert [(i.line, i.key_path) for i in caught.value.problems] == [(2, "a"), (4, "b")]


def test_syntax_error_has_line_and_column() -> None:
    issue = only_issue("a:\n  b: [1, 2\nc: 3\n")
    assert issue.key_path == "(syntax)"
    assert issue.line == 3
    assert issue.message.startswith("YAML syntax error: ")


def test_tab_indentation_is_a_syntax_error() -> None:
    issue = only_issue("a:\n\tb: 1\n")
    assert issue.line == 2
    assert "YAML syntax error" in issue.message


def test_second_document_is_refused() -> None:
    issue = only_issue("a: 1\n---\nb: 2\n")
    assert issue.line == 2
    assert "single document" in issue.message


def test_alias_refused_at_its_use() -> None:
    issue = only_issue("a: &x {b: 1}\nc: *x\n")
    assert (issue.line, issue.key_path) == (2, "c")
    assert "anchors and aliases" in issue.message


def test_merge_key_refused() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_yaml("base: &b {x: 1}\nother:\n  <<: *b\n  y: 2\n", "t.yaml")
    messages = [(i.line, i.message) for i in caught.value.problems]
    assert any(line == 3 and "merge keys" in m for line, m in messages)


@pytest.mark.parametrize("word", ["yes", "no", "on", "off", "true", "False"])
def test_boolean_looking_key_refused_with_hint(word: str) -> None:
    issue = only_issue(f"a:\n  {word}: 1\n")
    assert (issue.line, issue.key_path) == (2, "a")
    assert "quote it" in issue.message


def test_quoted_boolean_word_is_a_plain_key() -> None:
    assert parse_yaml('a:\n  "on": 1\n', "t.yaml").data == {"a": {"on": 1}}


def test_integer_keys_are_allowed_for_stage_tables() -> None:
    assert parse_yaml("lengths: {1: 15, 2: 20}\n", "t.yaml").data == {"lengths": {1: 15, 2: 20}}


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("? [a, b]\n: 1\n", "not a list or a mapping"),
        ("~: 1\n", "empty (null)"),
        ("1.5: x\n", "is not text"),
        ("a: !!set {x, y}\n", "tag 'tag:yaml.org,2002:set'"),
        ("a: !!omap [x: 1]\n", "tag 'tag:yaml.org,2002:omap'"),
        ("a: !custom 5\n", "cannot read '5'"),
        ("a: !!python/object:os.system x\n", "cannot read"),
        ("a: 2024-13-45\n", "cannot read '2024-13-45'"),
        ("a: !!int abc\n", "cannot read 'abc'"),
    ],
)
def test_odd_yaml_is_refused_not_crashed(text: str, fragment: str) -> None:
    issue = only_issue(text)
    assert fragment in issue.message
    assert issue.line == 1


def test_nesting_deeper_than_the_limit_is_refused() -> None:
    text = "a: " + "[" * (MAX_DEPTH + 2) + "]" * (MAX_DEPTH + 2) + "\n"
    issue = only_issue(text)
    assert f"deeper than {MAX_DEPTH}" in issue.message


def test_absurd_nesting_is_refused_without_recursion_error() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_yaml("[" * 5000 + "]" * 5000, "t.yaml")
    assert "nested" in caught.value.problems[0].message


def test_forbidden_character_is_refused_with_position() -> None:
    issue = only_issue("a: 1\nb: x\x07y\n")
    assert (issue.line, issue.col) == (2, 5)
    assert "U+0007" in issue.message


def test_empty_and_comment_only_text_is_refused() -> None:
    assert "empty" in only_issue("").message
    assert "empty" in only_issue("# nothing\n\n").message


def test_read_config_text_refuses_non_utf8_with_position(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"a: 1\nname: caf\xe9\n")
    with pytest.raises(ConfigError) as caught:
        read_config_text(path)
    (issue,) = caught.value.problems
    assert (issue.line, issue.col) == (2, 10)
    assert "0xe9 is not valid UTF-8" in issue.message


def test_read_config_text_accepts_a_byte_order_mark(tmp_path: Path) -> None:
    path = tmp_path / "bom.yaml"
    path.write_bytes(b"\xef\xbb\xbfa: 1\n")
    assert read_config_text(path) == "a: 1\n"


def test_read_config_text_refuses_huge_files(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    path.write_bytes(b"#" * (MAX_CONFIG_BYTES + 1))
    with pytest.raises(ConfigError) as caught:
        read_config_text(path)
    assert caught.value.lines() == [
        f"{path}: the file is larger than {MAX_CONFIG_BYTES} bytes: this is not a treadmill "
        "configuration"
    ]


def test_read_config_text_names_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        read_config_text(tmp_path)
    assert caught.value.lines()[0].startswith(f"{tmp_path}: cannot read the configuration file")


def test_config_error_is_a_value_error_and_sorted() -> None:
    error = ConfigError(
        [
            ConfigIssue("f", 9, 1, "b", "second"),
            ConfigIssue("f", 2, 5, "a", "first"),
        ]
    )
    assert isinstance(error, ValueError)
    assert error.lines() == ["f:2:5: a: first", "f:9:1: b: second"]
    assert str(error) == "f:2:5: a: first\nf:9:1: b: second"
