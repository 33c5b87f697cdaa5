"""Host selection for every command that takes a hostlist (`deploy --limit`, `check --limit`,
`power ... HOSTLIST`, `reinstall HOSTLIST`, `status --limit`): one expansion, one refusal of
unknown names, one error line.

A typo must never select nothing silently (deploy would configure no host and report success),
so a name the cluster does not have is an input error that names the flag, the expression, the
unknown hosts and the closest known name."""

from __future__ import annotations

import difflib
from typing import Sequence

from podsys.cluster.model import Cluster, NodeSpec
from podsys.cluster.hostlists import HostlistError, collapse_hosts, expand_hosts
from podsys.errors import InputError, Problem


def select_names(expression: str, known: Sequence[str], flag: str = "--limit") -> list[str]:
    """Hostlist `expression` -> the names it selects, in `known`'s order, each once. Raises
    InputError (one line: flag, expression, unknown hosts, a close match) for any unknown name."""
    try:
        wanted = expand_hosts(expression.replace(" ", ""))
    except HostlistError as exc:
        raise InputError(Problem(flag, None, "", f"{expression!r}: {exc}")) from None
    known_set = set(known)
    unknown = list(dict.fromkeys(h for h in wanted if h not in known_set))
    if unknown:
        close = difflib.get_close_matches(unknown[0], list(known), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise InputError(Problem(flag, None, "", f"{expression!r}: not hosts of this cluster: {collapse_hosts(unknown)}{hint}"))
    wanted_set = set(wanted)
    return [h for h in known if h in wanted_set]


def select_nodes(cluster: Cluster, expression: str | None, flag: str = "--limit") -> list[NodeSpec]:
    """The compute nodes `expression` selects, in manifest order; every node when there is none
    (None; an empty expression is refused like any malformed one)."""
    if expression is None:
        return list(cluster.nodes)
    return [cluster.node(name) for name in select_names(expression, [n.name for n in cluster.nodes], flag)]
