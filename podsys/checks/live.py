"""The shape shared by checks that run on a deployed cluster.

An area asks for Probes (a shell command on one host); the check runner executes them and
hands back ProbeResults; the area's pure `judge` turns those into Findings. Keeping the
commands as data lets tests judge recorded outputs without any host."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping

if TYPE_CHECKING:
    from podsys.cluster.hardware import HardwareProfile
    from podsys.cluster.model import Cluster, NodeSpec


@dataclass(frozen=True)
class Probe:
    host: str  # inventory name: a node name or the head's hostname
    name: str  # what it collects; also the raw output's file name
    command: str  # POSIX shell, run as the access user
    timeout: int = 120
    feeds: tuple[str, ...] = ()  # check-name prefixes its output is judged for; () = the whole area


@dataclass(frozen=True)
class ProbeResult:
    host: str
    name: str
    command: str
    rc: int | None  # None: the command never ran (connection failed, timed out)
    stdout: str = ""
    stderr: str = ""
    error: str = ""  # why it never ran

    @property
    def ran(self) -> bool:
        return self.rc is not None

    def problem(self) -> str:
        """One line for a finding's detail when the probe could not produce output."""
        if not self.ran:
            return f"could not run on {self.host}: {self.error}"
        tail = (self.stderr.strip() or self.stdout.strip()).splitlines()[-1:] or [""]
        return f"`{self.name}` exited {self.rc} on {self.host}: {tail[0][:160]}"


Results = Mapping[tuple[str, str], ProbeResult]


@dataclass(frozen=True)
class Context:
    cluster: "Cluster"
    nodes: tuple["NodeSpec", ...]  # the selected compute nodes
    head: str  # the head's inventory name
    dcgm_level: int = 1  # dcgmi diag -r N on GPU nodes; 0 leaves it out (level 3/4 take minutes)

    def profile(self, node: "NodeSpec") -> "HardwareProfile":
        return self.cluster.profile_of(node)

    @property
    def hosts(self) -> list[str]:
        return [self.head] + [n.name for n in self.nodes]


def sections_script(sections: Mapping[str, str]) -> str:
    """One shell script printing `### name` before each command's output, so one SSH round
    trip collects many small facts. A failing command leaves its section empty."""
    parts = []
    for name, command in sections.items():
        parts.append(f"echo '### {name}'; ( {command} ) 2>&1 || true")
    return "; ".join(parts)


def split_sections(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    current = None
    lines: list[str] = []
    for line in text.splitlines():
        m = re.match(r"^### (\S+)\s*$", line)
        if m:
            if current is not None:
                out[current] = "\n".join(lines).strip()
            current, lines = m.group(1), []
        elif current is not None:
            lines.append(line)
    if current is not None:
        out[current] = "\n".join(lines).strip()
    return out


def quote(value: str) -> str:
    return shlex.quote(value)
