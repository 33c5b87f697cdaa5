"""YAML loading that remembers where every key came from, so errors can name file:line.

Manifests are written by hand and sometimes by someone hostile, so loading is bounded: the
file's size, the nesting depth and what anchors and aliases expand to are all capped before
anything walks the document (a "billion laughs" file composes to a few nodes but expands to
billions), and every refusal is a Problem with the line that caused it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from podsys.errors import InputError, Problem

Path_ = tuple  # a key path: ("node_groups", 0, "hosts")

# A manifest is a few KB; 4,096 nodes with inline MACs stay under 1 MB.
MAX_FILE_BYTES = 8 * 1024 * 1024
# Nodes of the document once every alias is expanded (what pydantic will walk).
MAX_EXPANDED_NODES = 200_000
# Nesting depth, counting through aliases; the deepest manifest path is about 6.
MAX_DEPTH = 64

STR_TAG = "tag:yaml.org,2002:str"
MERGE_TAG = "tag:yaml.org,2002:merge"


@dataclass
class SourceMap:
    """Line numbers (1-based) of every mapping key and sequence item, by key path."""

    file: str
    lines: dict[tuple, int] = field(default_factory=dict)

    def line_of(self, path: tuple) -> int | None:
        """The line of the deepest known prefix of `path` (a missing key points at its parent)."""
        path = tuple(path)
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get((), 1)

    def problem(self, path: tuple, message: str) -> Problem:
        return Problem(self.file, self.line_of(path), dotted(path), message)


def dotted(path: tuple) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


class _DepthLimitedLoader(yaml.SafeLoader):
    """SafeLoader whose composer refuses nesting past MAX_DEPTH (PyYAML's composer recurses,
    so a deep enough document would otherwise end in RecursionError) and records every alias
    with where it was written."""

    def __init__(self, stream: str, file: str):
        super().__init__(stream)
        self._file = file
        self._depth = 0
        self.alias_uses: list[tuple[yaml.Node, yaml.Mark]] = []

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            node = super().compose_node(parent, index)
            self.alias_uses.append((node, mark))
            return node
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise InputError(Problem(self._file, mark.line + 1, "", f"nesting deeper than {MAX_DEPTH} levels"))
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _check_expansion(root: yaml.Node, alias_uses: list[tuple[yaml.Node, yaml.Mark]], file: str) -> None:
    """Size and depth of the document with every alias expanded, computed on the node graph
    (linear in its size, never expanding it); refuse cycles, bombs and alias-built depth."""
    sizes: dict[int, int] = {}
    depths: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            kids = _children(node)
            sizes[key] = min(1 + sum(sizes[id(c)] for c in kids), MAX_EXPANDED_NODES + 1)
            depths[key] = 1 + max((depths[id(c)] for c in kids), default=0)
            on_path.discard(key)
            continue
        if key in sizes:
            continue
        on_path.add(key)
        stack.append((node, True))
        for child in _children(node):
            if id(child) in on_path:
                line = next((m.line + 1 for n, m in alias_uses if n is child), child.start_mark.line + 1)
                raise InputError(Problem(file, line, "", "an alias refers to a node that contains it (a recursive document)"))
            if id(child) not in sizes:
                stack.append((child, False))
    too_big = sizes[id(root)] > MAX_EXPANDED_NODES
    too_deep = depths[id(root)] > MAX_DEPTH
    if not (too_big or too_deep):
        return
    # Point at the first alias that alone expands past the limit (the level where the bomb
    # goes off), else at the one that pulls in the most.
    node, mark = max(alias_uses, key=lambda use: (sizes.get(id(use[0]), 0), -use[1].line), default=(root, root.start_mark))
    what = (f"expand the document to more than {MAX_EXPANDED_NODES} values" if too_big
            else f"nest the document deeper than {MAX_DEPTH} levels")
    raise InputError(Problem(file, mark.line + 1, "", f"anchors and aliases {what} (an alias bomb?)"))


def _key_problem(key_node: yaml.Node) -> str | None:
    if isinstance(key_node, yaml.ScalarNode) and key_node.tag in (STR_TAG, MERGE_TAG):
        return None
    if isinstance(key_node, yaml.ScalarNode):
        kind = {"int": "number", "float": "number", "bool": "boolean", "null": "null", "timestamp": "date"}.get(
            key_node.tag.rsplit(":", 1)[-1], key_node.tag)
        return f"mapping key {key_node.value!r} is read as a {kind}, not a string (quote it)"
    kind = "list" if isinstance(key_node, yaml.SequenceNode) else "mapping"
    return f"a mapping key must be a string, not a {kind}"


def _index(root: yaml.Node, smap: SourceMap, problems: list[Problem]) -> None:
    stack: list[tuple[yaml.Node, tuple]] = [(root, ())]
    while stack:
        node, path = stack.pop()
        if isinstance(node, yaml.MappingNode):
            seen: set = set()
            for key_node, value_node in node.value:
                line = key_node.start_mark.line + 1
                bad = _key_problem(key_node)
                if bad:
                    problems.append(Problem(smap.file, line, dotted(path), bad))
                    continue
                key = key_node.value
                if key in seen:
                    problems.append(Problem(smap.file, line, dotted(path + (key,)), "duplicate key"))
                seen.add(key)
                smap.lines.setdefault(path + (key,), line)
                stack.append((value_node, path + (key,)))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                smap.lines.setdefault(path + (i,), item.start_mark.line + 1)
                stack.append((item, path + (i,)))


def _syntax_problem(exc: yaml.YAMLError, text: str, file: str) -> Problem:
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        reason = exc.problem or str(exc)
        if "'\\t'" in reason:
            reason += " (YAML indents with spaces, never tabs)"
        return Problem(file, line, "", f"YAML syntax error: {reason}")
    if isinstance(exc, yaml.reader.ReaderError):
        line = text[: exc.position].count("\n") + 1
        return Problem(file, line, "", f"character {exc.character!r} is not allowed in YAML (a control character?)")
    return Problem(file, None, "", f"YAML error: {exc}")


def load_yaml(text: str, file: str) -> tuple[Any, SourceMap]:
    """Parse YAML text; raise InputError (with the line) on syntax errors, duplicate or
    non-string keys, and documents too deep or too large once aliases are expanded."""
    smap = SourceMap(file)
    problems: list[Problem] = []
    try:
        loader = _DepthLimitedLoader(text, file)  # the reader checks every character here
    except yaml.YAMLError as exc:
        raise InputError(_syntax_problem(exc, text, file)) from None
    try:
        node = loader.get_single_node()
        if node is None:
            raise InputError(Problem(file, 1, "", "the file is empty"))
        _check_expansion(node, loader.alias_uses, file)
        _index(node, smap, problems)
        smap.lines[()] = node.start_mark.line + 1
        if problems:
            raise InputError(sorted(problems, key=lambda p: (p.line or 0, p.field)))
        data = loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise InputError(_syntax_problem(exc, text, file)) from None
    finally:
        loader.dispose()
    return data, smap


def read_text_file(path: Path, what: str = "file", max_bytes: int = MAX_FILE_BYTES) -> str:
    """A hand-written text file as str; InputError naming the file (and the line of the first
    bad byte) for a missing, unreadable, oversized, binary or non-UTF-8 file."""
    path = Path(path)
    try:
        if path.is_dir():
            raise InputError(Problem(str(path), None, "", f"is a directory, not a {what}"))
        size = path.stat().st_size
        if size > max_bytes:
            raise InputError(Problem(str(path), None, "", f"{size} bytes is too large for a {what} (limit {max_bytes})"))
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(Problem(str(path), None, "", "file not found")) from None
    except OSError as exc:
        raise InputError(Problem(str(path), None, "", f"cannot read: {exc.strerror}")) from None
    if b"\0" in data:
        line = data[: data.index(b"\0")].count(b"\n") + 1
        raise InputError(Problem(str(path), line, "", f"binary data (a NUL byte): not a {what}"))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InputError(Problem(str(path), line, "", f"not UTF-8 text (byte 0x{data[exc.start]:02x})")) from None
    return text.removeprefix("\ufeff")


def load_yaml_file(path: Path) -> tuple[Any, SourceMap]:
    return load_yaml(read_text_file(path, "YAML file"), str(path))
