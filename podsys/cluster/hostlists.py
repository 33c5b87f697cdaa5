"""Hostlists: Slurm-style `gpu[001-032]` expressions to node names and back, bounded and
checked before anything is expanded, and the hostname rule every name must meet."""

from __future__ import annotations

import re

import hostlist

HOSTNAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
# A cluster's node count across every group; 4,096 is the largest example. The bound is
# checked by counting ranges before anything is expanded, so no hostlist costs more than this.
MAX_NODES = 16_384
# Bracket groups in one name (rack[1-4]-node[01-32] has two); python-hostlist recurses per group.
MAX_RANGES_PER_NAME = 8


class HostlistError(ValueError):
    pass


def _top_level_parts(expression: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in expression:
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
            continue
        current += char
        depth += {"[": 1, "]": -1}.get(char, 0)
        if depth not in (0, 1):
            raise HostlistError(f"malformed hostlist {_shown(expression)}: {'nested' if depth > 1 else 'unbalanced'} brackets")
    if depth:
        raise HostlistError(f"malformed hostlist {_shown(expression)}: unbalanced brackets")
    parts.append(current)
    return parts


def _shown(expression: str) -> str:
    return repr(expression if len(expression) <= 60 else expression[:60] + "...")


def count_hosts(expression: str) -> int:
    """How many names `expression` expands to, without expanding it (an upper bound when
    it repeats names). Raises HostlistError for a malformed one."""
    total = 0
    for part in _top_level_parts(expression):
        ranges = re.findall(r"\[([^\]]*)\]", part)
        if len(ranges) > MAX_RANGES_PER_NAME:
            raise HostlistError(f"hostlist {_shown(expression)} has more than {MAX_RANGES_PER_NAME} [ranges] in one name")
        count = 1
        for body in ranges:
            size = 0
            for item in body.split(","):
                low, _, high = item.partition("-")
                if not low.isdigit() or (high and not high.isdigit()):
                    raise HostlistError(f"malformed hostlist {_shown(expression)}: bad range [{body}]")
                size += int(high) - int(low) + 1 if high else 1
            count *= max(size, 0)
        total += count
    return total


def expand_hosts(expression: str, budget: int = MAX_NODES) -> list[str]:
    """Slurm-style hostlist -> names, in order. Raises HostlistError with the reason,
    before expanding anything, when it would yield more than `budget` names."""
    if not expression or not expression.strip():
        raise HostlistError("empty hostlist")
    count = count_hosts(expression)
    if count > budget:
        raise HostlistError(f"hostlist {_shown(expression)} expands to {count} names; podsys handles at most "
                            f"{MAX_NODES} nodes in all")
    if ",," in expression or expression.strip().endswith(",") or expression.strip().startswith(","):
        raise HostlistError(f"malformed hostlist {_shown(expression)}: empty element")
    try:
        names = hostlist.expand_hostlist(expression)
    except hostlist.BadHostlist as exc:
        raise HostlistError(f"malformed hostlist {_shown(expression)}: {exc}") from None
    for name in names:
        if not HOSTNAME_RE.match(name):
            raise HostlistError(f"hostlist {_shown(expression)} yields {name!r}, which is not a valid hostname")
    return names


def collapse_hosts(names: list[str]) -> str:
    return hostlist.collect_hostlist(names)
