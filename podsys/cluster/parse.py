"""Schema validation: YAML data -> typed Manifest, with pydantic errors turned into one-line
problems that name file, line and field (and suggest the closest key for a misspelt one).

`parse_manifest_partial` keeps going past schema errors: the top-level sections that did
validate are returned (with the names of the broken ones) so the semantic checks that do
not depend on a broken section still run in the same pass."""

from __future__ import annotations

import difflib
import re
import types
import typing
from typing import Any

from pydantic import BaseModel, TypeAdapter, ValidationError

from podsys.errors import InputError, Problem
from podsys.cluster.schema import PATTERN_HELP, SECRET_FIELDS, Manifest
from podsys.cluster.yaml_source import SourceMap


def _unwrap(annotation: Any) -> list[Any]:
    """Candidate model/container types behind Optional/Union/list/dict annotations."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return [t for arg in typing.get_args(annotation) for t in _unwrap(arg)]
    return [annotation]


def model_fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    """Field names of the model that sits at `loc` (used to suggest a close key)."""
    candidates: list[Any] = [model]
    for part in loc:
        nxt: list[Any] = []
        for cand in candidates:
            origin = typing.get_origin(cand)
            if isinstance(part, str) and isinstance(cand, type) and issubclass(cand, BaseModel):
                field = cand.model_fields.get(part)
                if field is not None:
                    nxt.extend(_unwrap(field.annotation))
            elif origin is list and isinstance(part, int):
                nxt.extend(_unwrap(typing.get_args(cand)[0]))
            elif origin is dict:
                nxt.extend(_unwrap(typing.get_args(cand)[1]))
        candidates = nxt
    names: list[str] = []
    for cand in candidates:
        if isinstance(cand, type) and issubclass(cand, BaseModel):
            names.extend(cand.model_fields)
    return names


def _message(error: dict, model: type[BaseModel]) -> str:
    kind, loc = error["type"], error["loc"]
    if kind == "extra_forbidden":
        key = str(loc[-1])
        known = model_fields_at(model, loc[:-1])
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        hint = f" (did you mean '{close[0]}'?)" if close else (f" (known keys: {', '.join(known)})" if known else "")
        return f"unknown key '{key}'{hint}"
    if kind == "missing":
        return "required field is missing"
    msg = error["msg"]
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix) :]
    if kind == "string_pattern_mismatch":
        pattern = (error.get("ctx") or {}).get("pattern")
        if pattern in PATTERN_HELP:
            msg = f"must be {PATTERN_HELP[pattern]}"
    if any(part in SECRET_FIELDS for part in loc if isinstance(part, str)):
        return msg  # the value may be a password or carry credentials: never shown
    shown = error.get("input")
    if isinstance(shown, str) and len(shown) > 80:
        return f"{msg} (got {shown[:80]!r}...)"
    if "input" in error and not isinstance(shown, (dict, list)) and not re.search(
            r"(?<![\w.])" + re.escape(repr(shown)) + r"(?![\w.])", msg):
        return f"{msg} (got {shown!r})"
    return msg


def _data_loc(loc: tuple, data: Any) -> tuple:
    """Keep the part of pydantic's loc that exists in the data (drops union tags)."""
    out: list = []
    node = data
    for part in loc:
        if isinstance(node, dict) and part in node:
            node = node[part]
            out.append(part)
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
            out.append(part)
        elif isinstance(node, dict) and isinstance(part, str) and not part.startswith(("function-", "union[")) and part[:1].islower():
            out.append(part)  # a missing key: name it, the line points at its parent
            node = None
        else:
            continue
    return tuple(out)


def _problems(exc: ValidationError, data: dict, smap: SourceMap) -> list[Problem]:
    problems: dict[tuple, Problem] = {}
    for error in exc.errors():
        loc = _data_loc(error["loc"], data)
        problem = smap.problem(loc, _message(error, Manifest))
        problems.setdefault((problem.line, problem.field, problem.message), problem)
    return sorted(problems.values(), key=lambda p: (p.line or 0, p.field))


def parse_manifest_partial(data: Any, smap: SourceMap) -> tuple[Manifest | None, frozenset[str], list[Problem]]:
    """(manifest, broken sections, schema problems). With no problems the manifest is fully
    validated; otherwise it is built from the sections that validated on their own, and
    reading a broken section from it raises AttributeError (the checks skip those)."""
    if not isinstance(data, dict):
        return None, frozenset(Manifest.model_fields), [
            smap.problem((), "a manifest must be a YAML mapping (apiVersion, kind, metadata, ...)")]
    try:
        return Manifest.model_validate(data), frozenset(), []
    except ValidationError as exc:
        problems = _problems(exc, data, smap)
        broken = {str(e["loc"][0]) for e in exc.errors() if e["loc"]}
    sections: dict[str, Any] = {}
    for name, info in Manifest.model_fields.items():
        if name in broken:
            continue
        if name in data:
            sections[name] = TypeAdapter(info.annotation).validate_python(data[name])
        else:
            sections[name] = info.get_default(call_default_factory=True)
    return Manifest.model_construct(**sections), frozenset(broken & set(Manifest.model_fields)), problems


def parse_manifest(data: Any, smap: SourceMap) -> Manifest:
    """The typed manifest, or InputError listing every schema problem."""
    manifest, _, problems = parse_manifest_partial(data, smap)
    if problems:
        raise InputError(problems)
    assert manifest is not None
    return manifest
