"""YAML loading that remembers where every key came from, so errors can name file:line."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from podsys.errors import InputError, Problem

Path_ = tuple  # a key path: ("node_groups", 0, "hosts")


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


def _index(node: yaml.Node, path: tuple, smap: SourceMap, problems: list[Problem]) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: set = set()
        for key_node, value_node in node.value:
            key = key_node.value
            line = key_node.start_mark.line + 1
            if key in seen:
                problems.append(Problem(smap.file, line, dotted(path + (key,)), "duplicate key"))
            seen.add(key)
            smap.lines[path + (key,)] = line
            _index(value_node, path + (key,), smap, problems)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            smap.lines[path + (i,)] = item.start_mark.line + 1
            _index(item, path + (i,), smap, problems)


def load_yaml(text: str, file: str) -> tuple[Any, SourceMap]:
    """Parse YAML text; raise InputError (with the line) on syntax errors or duplicate keys."""
    smap = SourceMap(file)
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise InputError(Problem(file, 1, "", "the file is empty"))
        problems: list[Problem] = []
        _index(node, (), smap, problems)
        smap.lines[()] = node.start_mark.line + 1
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        reason = exc.problem or str(exc)
        raise InputError(Problem(file, line, "", f"YAML syntax error: {reason}")) from None
    finally:
        loader.dispose()
    if problems:
        raise InputError(problems)
    return data, smap


def load_yaml_file(path: Path) -> tuple[Any, SourceMap]:
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise InputError(Problem(str(path), None, "", "file not found")) from None
    except OSError as exc:
        raise InputError(Problem(str(path), None, "", f"cannot read: {exc.strerror}")) from None
    return load_yaml(text, str(path))
