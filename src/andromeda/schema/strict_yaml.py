"""Strict YAML for manifests and claims files: plain data in the YAML 1.2 core schema, one-line errors naming the field.

What a manifest may hold: mappings with string keys, lists, strings, integers, finite or non-finite
floats (the manifest schema refuses the latter), booleans and null, anchors, aliases and `<<` merge
keys. Scalars resolve as in YAML 1.2's core schema: `1e-4` is a number, `yes`, `on` and `2024-01-01`
are strings. Refused, each with the field path and the line: explicit tags outside the core schema
(`!!binary`, `!!set`, `!!timestamp`, `!!python/...`, local `!tags`), a tagged scalar that is not what
its tag says (`!!int abc`), duplicate keys, non-string keys, nesting deeper than MAX_DEPTH levels,
aliases that expand past MAX_NODES values, files over MAX_BYTES, text that is not UTF-8, empty files.
Nothing is ever constructed from a tag: no code runs, whatever the file holds.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.resolver import BaseResolver
from yaml.scanner import Scanner

from andromeda.errors import ConfigError
from andromeda.schema.fields import show

MAX_BYTES = 1 << 20  # a manifest is at most 1 MiB
MAX_DEPTH = 32  # mappings and lists nested at most this deep (a manifest needs about 5)
MAX_NODES = 100_000  # values after aliases are expanded (a billion-laughs file stops here)

_T = "tag:yaml.org,2002:"
STR, INT, FLOAT, BOOL, NULL, SEQ, MAP, MERGE = (_T + n for n in ("str", "int", "float", "bool", "null", "seq",
                                                                 "map", "merge"))
_BOOL = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
_INT = re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$")
_FLOAT = re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
                    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$")
_NULL = re.compile(r"^(?:~|null|Null|NULL|)$")


class _CoreResolver(BaseResolver):
    """Implicit tags of the YAML 1.2 core schema (PyYAML's own resolver is YAML 1.1's)."""


for _tag, _regex, _first in ((BOOL, _BOOL, "tTfF"), (INT, _INT, "-+0123456789"), (FLOAT, _FLOAT, "-+0123456789."),
                             (NULL, _NULL, ["~", "n", "N", ""]), (MERGE, re.compile(r"^<<$"), "<")):
    _CoreResolver.add_implicit_resolver(_tag, _regex, list(_first))


class _TooDeep(Exception):
    def __init__(self, path: list[Any], mark: Any):
        self.path, self.mark = path, mark


class _Loader(Reader, Scanner, Parser, Composer, _CoreResolver):
    """PyYAML's parser and composer with the core resolver; it builds nodes only, never objects."""

    def __init__(self, stream: str):
        Reader.__init__(self, stream)
        Scanner.__init__(self)
        Parser.__init__(self)
        Composer.__init__(self)
        _CoreResolver.__init__(self)
        self.path: list[Any] = []  # where the composer is: keys (ScalarNode) and list indices

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        # depth is checked here, before PyYAML's recursive composer could reach Python's recursion limit
        self.path.append(index)
        try:
            if len(self.path) > MAX_DEPTH + 1:
                raise _TooDeep(list(self.path), self.peek_event().start_mark)
            return super().compose_node(parent, index)
        except yaml.MarkedYAMLError as e:  # remember the innermost field the parser was in
            if not hasattr(e, "field_path"):
                e.field_path = path_str(self.path)
            raise
        finally:
            self.path.pop()


def path_str(parts: list[Any], limit: int = 8) -> str:
    parts = [p for p in parts if p is not None]
    if len(parts) > limit:  # deep nesting: the top of the path says where
        return path_str(parts[:limit // 2]) + "...(" + str(len(parts) - limit // 2) + " more levels)"
    out = ""
    for p in parts:
        if isinstance(p, ScalarNode):
            p = p.value
        if p is None:
            continue
        out += f"[{p}]" if isinstance(p, int) else ("." if out else "") + str(p)
    return out


def _line(mark: Any) -> str:
    return f"line {mark.line + 1}" if mark is not None else "?"


# ---- text ------------------------------------------------------------------------------------
def read_text(path: str | Path, label: str) -> str:
    """A manifest file's text: at most MAX_BYTES of UTF-8 (a BOM is allowed)."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > MAX_BYTES:
            raise ConfigError(f"{label}: the file is {size:,} bytes; a manifest is at most {MAX_BYTES:,} bytes")
        data = p.read_bytes()
    except OSError as e:
        raise ConfigError(f"{label}: cannot read the file: {e.strerror or e}") from None
    return decode(data, label)


def decode(data: bytes, label: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ConfigError(f"{label}: not UTF-8 text (byte 0x{data[e.start]:02x} at line {line}, offset {e.start}); "
                          "a manifest is a UTF-8 YAML file") from None


# ---- YAML ------------------------------------------------------------------------------------
def load(text: str, label: str) -> Any:
    """The data of one YAML document (None when it is empty), or a ConfigError of one line."""
    try:
        loader = _Loader(text)
    except yaml.reader.ReaderError as e:
        line = text[: e.position].count("\n") + 1
        char = e.character if isinstance(e.character, int) else ord(str(e.character)[:1] or "?")
        raise ConfigError(f"{label}: the text holds the control character U+{char:04X} at line {line}; "
                          "a manifest is plain text") from None
    try:
        node = loader.get_single_node()
    except _TooDeep as e:
        raise ConfigError(f"{label}: {path_str(e.path) or 'the top level'}: nested deeper than {MAX_DEPTH} levels "
                          f"({_line(e.mark)})") from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        field = getattr(e, "field_path", "")
        where = f" (in {field})" if field else ""
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = ", ".join(x for x in (e.context, e.problem) if x) or str(e)
        problem = problem.replace("\n", " ")
        raise ConfigError(f"{label}: invalid YAML{at}{where}: {problem}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{label}: invalid YAML: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    finally:
        loader.dispose()
    if node is None:
        return None
    return _Builder(label).build(node, [], 0)


class _Builder:
    """Nodes -> plain Python data, with the path of every value for the errors."""

    def __init__(self, label: str):
        self.label, self.count = label, 0

    def fail(self, path: list[Any], node: Node, msg: str) -> ConfigError:
        where = path_str(path) or "the top level"
        return ConfigError(f"{self.label}: {where}: {msg} ({_line(node.start_mark)})")

    def build(self, node: Node, path: list[Any], depth: int) -> Any:
        self.count += 1
        if self.count > MAX_NODES:
            raise self.fail(path, node, f"the document expands to more than {MAX_NODES:,} values (aliases?)")
        if depth > MAX_DEPTH:
            raise self.fail(path, node, f"nested deeper than {MAX_DEPTH} levels (a recursive alias?)")
        if isinstance(node, ScalarNode):
            return self.scalar(node, path)
        if isinstance(node, SequenceNode):
            if node.tag != SEQ:
                raise self.fail(path, node, f"the tag {_short(node.tag)} is not allowed; use a plain list")
            return [self.build(item, [*path, i], depth + 1) for i, item in enumerate(node.value)]
        if node.tag != MAP:
            raise self.fail(path, node, f"the tag {_short(node.tag)} is not allowed; use a plain mapping")
        return self.mapping(node, path, depth)

    def mapping(self, node: MappingNode, path: list[Any], depth: int) -> dict[str, Any]:
        own: dict[str, Any] = {}
        merged: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if isinstance(key_node, ScalarNode) and key_node.tag == MERGE:
                for src in self._merge_sources(value_node, path):
                    for k, v in self.mapping(src, path, depth).items():
                        merged.setdefault(k, v)
                continue
            key = self.build(key_node, path, depth + 1) if not isinstance(key_node, ScalarNode) else \
                self.scalar(key_node, path)
            if not isinstance(key, str):
                raise self.fail(path, key_node, f"the key {show(key)} is not a string; write it in quotes")
            if key in own:
                raise self.fail([*path, key], key_node, "duplicate key: it appears twice in the same mapping; "
                                                        "keep one")
            own[key] = self.build(value_node, [*path, key], depth + 1)
        return {**merged, **own}

    def _merge_sources(self, node: Node, path: list[Any]) -> list[MappingNode]:
        items = node.value if isinstance(node, SequenceNode) else [node]
        if not all(isinstance(n, MappingNode) and n.tag == MAP for n in items):
            raise self.fail(path, node, "a '<<' merge key takes a mapping or a list of mappings")
        return items

    def scalar(self, node: ScalarNode, path: list[Any]) -> Any:
        tag, value = node.tag, node.value
        if tag in (STR, "!"):
            return value
        if tag == NULL and _NULL.match(value):
            return None
        if tag == BOOL and _BOOL.match(value):
            return value.lower() == "true"
        if tag == INT and _INT.match(value):
            return int(value, 0) if value[:2] in ("0o", "0x") else int(value)
        if tag == FLOAT and (_FLOAT.match(value) or _INT.match(value)):
            low = value.lower()
            if low.endswith((".inf", ".nan")):
                return math.nan if low.endswith("nan") else (-math.inf if low.startswith("-") else math.inf)
            return float(int(value, 0)) if value[:2] in ("0o", "0x") else float(value)
        kinds = {NULL: "null", BOOL: "a boolean", INT: "an integer", FLOAT: "a number"}
        if tag in kinds:
            raise self.fail(path, node, f"{_short(tag)} {value!r} is not {kinds[tag]}")
        raise self.fail(path, node, f"the tag {_short(tag)} is not allowed; a manifest holds plain strings, "
                                    "numbers, booleans, null, lists and mappings")


class _Dumper(yaml.SafeDumper):
    """safe_dump that quotes a string whenever YAML 1.1 (PyYAML, yaml.safe_load) or the core schema (load
    above) would read it back as something else: 'yes', '1e5', '0o17' stay strings for both."""

    def resolve(self, kind, value, implicit):
        tag = super().resolve(kind, value, implicit)
        if kind is ScalarNode and implicit[0] and tag == STR:
            for core, regex in ((BOOL, _BOOL), (INT, _INT), (FLOAT, _FLOAT), (NULL, _NULL)):
                if regex.match(value):
                    return core
        return tag


def dump(data: Any) -> str:
    """YAML text that load() and yaml.safe_load() both read back as `data` (plain data only)."""
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True)


def _short(tag: str) -> str:
    return "!!" + tag[len(_T):] if tag.startswith(_T) else tag


__all__ = ["load", "dump", "read_text", "decode", "MAX_BYTES", "MAX_DEPTH", "MAX_NODES", "path_str"]
