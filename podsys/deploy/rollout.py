"""Rolling stack upgrades, the pure part: batch planning, Slurm output parsing, the drain and
resume decisions, the verdict per node from the acceptance findings, and the rollout's state
machine. No SSH, no Ansible, no clock: podsys/deploy/upgrade.py does the side effects."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum
from typing import Iterable, Mapping, Sequence

from podsys.cluster.hostlists import HostlistError, expand_hosts

from podsys.checks.findings import Finding, Verdict
from podsys.errors import InputError, Problem

# Every drain podsys upgrade makes carries this prefix; only such drains are ever resumed by it
# (an admin's own drain, or a health drain `podsys:<fault-code>`, never is).
UPGRADE_REASON_PREFIX = "podsys:upgrade"

# The acceptance areas an upgraded batch must pass: GPU, InfiniBand, NCCL and the versions the
# stack pins. Slurm is left out on purpose: a drained node is not idle, which its check wants.
DEFAULT_CHECK_AREAS = ("versions", "gpu", "bandwidth", "infiniband", "nccl")


def upgrade_reason(stack_id: str) -> str:
    return f"{UPGRADE_REASON_PREFIX} to {stack_id}"


def is_upgrade_reason(reason: str) -> bool:
    """Ours: exactly the prefix, or the prefix and a space (never `podsys:upgraded-by-hand`)."""
    return reason == UPGRADE_REASON_PREFIX or reason.startswith(UPGRADE_REASON_PREFIX + " ")


# ----------------------------------------------------------------------------- batches


def plan_batches(nodes: Sequence[str], batch_size: int) -> list[list[str]]:
    """Nodes in manifest order, cut into batches of `batch_size` (the last may be smaller)."""
    if batch_size < 1:
        raise InputError(Problem("--batch", None, "", f"must be 1 or more, got {batch_size}"))
    return [list(nodes[i:i + batch_size]) for i in range(0, len(nodes), batch_size)]


# ----------------------------------------------------------------------------- Slurm output


@dataclass(frozen=True)
class SlurmNode:
    name: str
    state: str  # the base state, lower case: idle, mixed, allocated, down, ...
    flags: frozenset[str] = frozenset()  # drain, not_responding, completing, ... (lower case)
    reason: str = ""  # without the trailing " [user@time]"

    @property
    def drain_set(self) -> bool:
        """The DRAIN flag is set: 'draining' while jobs run, 'drained' once idle."""
        return "drain" in self.flags

    @property
    def busy(self) -> bool:
        return self.state in ("mixed", "allocated", "completing") or "completing" in self.flags


_REASON_SUFFIX = re.compile(r"\s*\[[^\[\]@]*@[^\[\]]*\]\s*$")


def parse_state(text: str) -> tuple[str, frozenset[str]]:
    """scontrol's State= value -> (base state, flags): 'IDLE+DRAIN' -> ('idle', {'drain'}),
    'DOWN*+DRAIN' -> ('down', {'drain', 'not_responding'}); '*' marks a node that does not
    respond (scontrol and sinfo both append it to the base state)."""
    parts = [p for p in text.strip().split("+") if p]
    if not parts:
        return "unknown", frozenset()
    base = parts[0].lower()
    flags = {p.lower() for p in parts[1:]}
    if base.endswith("*"):
        base = base.rstrip("*")
        flags.add("not_responding")
    return base, frozenset(flags)


def parse_scontrol_show_node(text: str) -> dict[str, SlurmNode]:
    """`scontrol show node [NODES]` -> {name: SlurmNode}.

    Format (Slurm's src/api/node_info.c, slurm_sprint_node_table, the same in 22.05 to 25.05):
    one record per node, records separated by a blank line, the first line
    `NodeName=<name> Arch=...`, indented lines of space-separated Key=Value pairs, where a value
    may itself hold spaces (`OS=Linux 6.1.0-13-amd64 #1 SMP ...`), and the reason alone on its
    line as `Reason=<text> [<user>@<time>]`. The one-line form (`scontrol -o`) puts the same
    pairs on one line; Reason is then parsed up to the [user@time] that ends it."""
    nodes: dict[str, SlurmNode] = {}
    # Every record, in either form, starts with NodeName= at the start of a line.
    for record in re.split(r"(?m)^(?=NodeName=)", text):
        fields = _record_fields(record)
        name = fields.get("NodeName", "").split()[0] if fields.get("NodeName") else ""
        if not name:
            continue
        state, flags = parse_state(fields.get("State", "").split()[0] if fields.get("State") else "")
        nodes[name] = SlurmNode(name, state, flags, _clean_reason(fields.get("Reason", "")))
    return nodes


def _record_fields(record: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in record.splitlines():
        line = line.strip()
        if not line:
            continue
        reason_at = line.find("Reason=")
        if reason_at == 0 or (reason_at > 0 and line[reason_at - 1] == " "):
            tail = line[reason_at + len("Reason="):]
            # one-line form: the reason ends at its [user@time]; what follows are more pairs
            end = re.search(r"\[[^\[\]@]*@[^\[\]]*\]", tail)
            fields["Reason"] = tail[:end.end()] if end else tail
            rest = tail[end.end():] if end else ""
            line = line[:reason_at] + " " + rest
        key = None
        for token in line.split():
            k, eq, v = token.partition("=")
            if eq and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k):
                key = k
                fields[key] = v
            elif key is not None:  # a value with spaces: OS=Linux 6.1.0 #1 SMP ...
                fields[key] += " " + token
    return fields


def _clean_reason(reason: str) -> str:
    reason = reason.strip()
    if reason in ("(null)", "None"):
        return ""
    return _REASON_SUFFIX.sub("", reason).strip()


@dataclass(frozen=True)
class SlurmJob:
    job_id: str
    state: str  # RUNNING, COMPLETING, ...
    nodes: tuple[str, ...]


# Job states that hold nodes (squeue's %T, long form). PENDING jobs hold none.
ACTIVE_JOB_STATES = frozenset({"RUNNING", "COMPLETING", "CONFIGURING", "SUSPENDED", "STOPPED", "SIGNALING",
                               "STAGE_OUT", "RESIZING"})

SQUEUE_FORMAT = "%i|%T|%N"


def parse_squeue(text: str) -> list[SlurmJob]:
    """`squeue -h -o '%i|%T|%N'` -> jobs (%i job id, %T long state, %N the compressed
    hostlist of its nodes, empty while pending; squeue(1) FORMAT options)."""
    jobs: list[SlurmJob] = []
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) != 3 or not parts[0]:
            continue
        try:
            nodes = tuple(expand_hosts(parts[2].strip())) if parts[2].strip() else ()
        except HostlistError:
            nodes = (parts[2].strip(),)
        jobs.append(SlurmJob(parts[0].strip(), parts[1].strip().upper(), nodes))
    return jobs


def jobs_on(jobs: Iterable[SlurmJob], nodes: Iterable[str]) -> list[SlurmJob]:
    """The jobs that still hold any of `nodes`."""
    wanted = set(nodes)
    return [j for j in jobs if j.state in ACTIVE_JOB_STATES and wanted.intersection(j.nodes)]


# ----------------------------------------------------------------------------- decisions


class DrainAction(str, Enum):
    DRAIN = "drain"  # in service: podsys drains it with its reason
    OURS = "ours"  # already drained by podsys upgrade (an earlier, interrupted rollout)
    FOREIGN = "foreign"  # drained or down for someone else's reason: left as it is, never resumed
    NOT_IN_SLURM = "not-in-slurm"  # no Slurm layer, or slurmctld does not know it


def drain_action(node: SlurmNode | None) -> DrainAction:
    """What podsys does before upgrading a node. A new drain on a node already drained would
    overwrite the admin's reason (scontrol replaces it), so such a node keeps its reason; it
    is upgraded (it runs nothing) but stays drained afterwards."""
    if node is None:
        return DrainAction.NOT_IN_SLURM
    if node.drain_set and is_upgrade_reason(node.reason):
        return DrainAction.OURS
    if node.drain_set or node.state in ("down", "fail", "future") or "fail" in node.flags:
        return DrainAction.FOREIGN
    return DrainAction.DRAIN


@dataclass(frozen=True)
class ResumeDecision:
    node: str
    resume: bool
    why: str


def resume_decision(name: str, node: SlurmNode | None, passed: bool, failures: Sequence[str] = ()) -> ResumeDecision:
    """Resume only a node that passed its checks AND whose drain is podsys upgrade's own (the
    reason as it is now, read back from slurmctld: an admin who re-drained it meanwhile wins)."""
    if not passed:
        return ResumeDecision(name, False, "checks failed: " + "; ".join(failures) if failures else "checks failed")
    if node is None:
        return ResumeDecision(name, False, "not known to Slurm: nothing to resume")
    if not node.drain_set:
        return ResumeDecision(name, False, f"not drained (state {node.state}): nothing to resume")
    if not is_upgrade_reason(node.reason):
        return ResumeDecision(name, False, f"drained by someone else ({node.reason or 'no reason'}): left drained")
    return ResumeDecision(name, True, "checks passed")


def failures_by_node(findings: Iterable[Finding], batch: Sequence[str]) -> dict[str, list[str]]:
    """Each batch node -> one line per FAIL naming it (a pair `a->b` names both, `cluster`
    every node of the batch); nodes with none map to []."""
    out: dict[str, list[str]] = {n: [] for n in batch}
    for f in findings:
        if f.verdict is not Verdict.FAIL:
            continue
        names = list(batch) if f.node == "cluster" else f.node.split("->")
        line = f"{f.check}: {f.detail}" + (f" ({f.diagnosis})" if f.diagnosis else "")
        for name in names:
            if name in out:
                out[name].append(line if f.node in (name, "cluster") else f"{f.node} {line}")
    return out


# ----------------------------------------------------------------------------- state machine


class Phase(str, Enum):
    PLANNED = "planned"
    DRAINING = "draining"  # drain asked for, jobs still running
    INSTALLING = "installing"  # deploy with the new stack (reboots included)
    CHECKING = "checking"
    DONE = "done"  # every node passed and was resumed (or left to its owner's drain)
    FAILED = "failed"
    NOT_STARTED = "not-started"  # an earlier batch failed: the rollout stopped


# (phase, event) -> next phase. Anything else is a bug in the driver, not a user error.
TRANSITIONS: Mapping[tuple[Phase, str], Phase] = {
    (Phase.PLANNED, "drain"): Phase.DRAINING,
    (Phase.PLANNED, "stop"): Phase.NOT_STARTED,
    (Phase.DRAINING, "jobs-done"): Phase.INSTALLING,
    (Phase.DRAINING, "timeout"): Phase.FAILED,
    (Phase.DRAINING, "error"): Phase.FAILED,
    (Phase.INSTALLING, "installed"): Phase.CHECKING,
    (Phase.INSTALLING, "install-failed"): Phase.FAILED,
    (Phase.INSTALLING, "error"): Phase.FAILED,
    (Phase.CHECKING, "passed"): Phase.DONE,
    (Phase.CHECKING, "checks-failed"): Phase.FAILED,
    (Phase.CHECKING, "error"): Phase.FAILED,
}


def advance(phase: Phase, event: str) -> Phase:
    try:
        return TRANSITIONS[(phase, event)]
    except KeyError:
        raise ValueError(f"no transition from {phase.value} on {event!r}") from None


@dataclass
class BatchState:
    index: int  # 1-based
    nodes: list[str]
    phase: Phase = Phase.PLANNED
    drained: list[str] = field(default_factory=list)  # drained by this rollout
    left_drained: dict[str, str] = field(default_factory=dict)  # node -> why it was not resumed
    resumed: list[str] = field(default_factory=list)
    failures: dict[str, list[str]] = field(default_factory=dict)  # node -> findings / deploy reason
    jobs: dict[str, str] = field(default_factory=dict)  # job id -> what became of it
    note: str = ""

    def step(self, event: str, note: str = "") -> Phase:
        self.phase = advance(self.phase, event)
        if note:
            self.note = note
        return self.phase

    def as_dict(self) -> dict:
        return {"batch": self.index, "nodes": self.nodes, "phase": self.phase.value, "drained": self.drained,
                "resumed": self.resumed, "left_drained": self.left_drained, "failures": self.failures,
                "jobs": self.jobs, "note": self.note}


@dataclass
class Rollout:
    stack: str
    batches: list[BatchState]

    @classmethod
    def plan(cls, stack: str, nodes: Sequence[str], batch_size: int) -> "Rollout":
        return cls(stack, [BatchState(i + 1, b) for i, b in enumerate(plan_batches(nodes, batch_size))])

    def stop_after(self, failed: BatchState) -> None:
        """A batch failed: every later batch is left untouched."""
        for b in self.batches[failed.index:]:
            if b.phase is Phase.PLANNED:
                b.step("stop", f"rollout stopped at batch {failed.index}")

    @property
    def failed_batch(self) -> BatchState | None:
        return next((b for b in self.batches if b.phase is Phase.FAILED), None)

    @property
    def succeeded(self) -> bool:
        return all(b.phase is Phase.DONE for b in self.batches)

    def as_dict(self) -> dict:
        failed = self.failed_batch
        return {"stack": self.stack, "succeeded": self.succeeded,
                "stopped_at_batch": failed.index if failed else None,
                "batches": [b.as_dict() for b in self.batches]}
