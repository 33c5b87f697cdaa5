"""`podsys deploy` drives the bare-metal installs: which nodes to PXE-boot, each node's install
phase from the head's status records, and a small driver that powers them, polls and waits.

The install phase is a pure function of the node's status record, the record as it was when
the deploy powered the node (so a stale `failed` from an earlier attempt is never read as this
attempt's result), the SSH probe and the clock:

    pending -> powering -> installing (stage) -> installed -> reachable
                                                           | failed (stage) | timed out (last stage)

The driver gets everything with side effects passed in (status reader, power, SSH probe,
clock, sleep), so tests drive timeouts and resume without waiting; podsys/deploy/install_backends.py
wires the real ones."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Callable, Iterable, Mapping, Sequence

from podsys.cluster.hostlists import collapse_hosts
from podsys.errors import PodsysError

DEFAULT_INSTALL_TIMEOUT_MIN = 30.0
DEFAULT_POLL_S = 5.0


class Phase(str, Enum):
    PENDING = "pending"  # in install state, nobody has powered it yet
    POWERING = "powering"  # powered (or the admin was asked to), no callback from this attempt yet
    INSTALLING = "installing"
    INSTALLED = "installed"  # the ramdisk said finish; waiting for SSH from its disk
    REACHABLE = "reachable"  # installed and answers SSH with the head's key
    FAILED = "failed"
    TIMED_OUT = "timed out"


FINAL = frozenset({Phase.REACHABLE, Phase.FAILED, Phase.TIMED_OUT})


# ----------------------------------------------------------------------------- status records


@dataclass(frozen=True)
class NodeRecord:
    """One node's record on the head (podsys/provision/state.py's fields)."""

    boot: str = "install"
    state: str = "pending"  # pending | installing | installed | failed
    stage: str = ""
    message: str = ""
    started: str = ""
    finished: str = ""
    updated: str = ""
    host_keys: tuple[str, ...] = ()  # the SSH host keys the deploy ramdisk made, `<type> <base64>` each

    @classmethod
    def from_mapping(cls, data: Mapping) -> "NodeRecord":
        texts = {k: str(data.get(k) or "") for k in ("boot", "state", "stage", "message", "started", "finished",
                                                      "updated")}
        return cls(**texts, host_keys=host_keys_of(data))


def host_keys_of(data: Mapping) -> tuple[str, ...]:
    """A record's host keys; () from a head whose state predates them."""
    keys = data.get("host_keys")
    if not isinstance(keys, (list, tuple)):
        return ()
    return tuple(k for k in keys if isinstance(k, str) and k)


def records_from_state_show(text: str) -> dict[str, NodeRecord]:
    """`python3 -m podsys.provision.state show` on the head: {node: record}."""
    try:
        data = json.loads(text)
    except ValueError:
        raise PodsysError(f"the head's install state is not JSON: {text[:120]!r}") from None
    if not isinstance(data, dict):
        raise PodsysError("the head's install state is not a JSON object")
    return {str(name): NodeRecord.from_mapping(rec) for name, rec in data.items() if isinstance(rec, Mapping)}


def records_from_status_json(text: str) -> dict[str, NodeRecord]:
    """The status service's GET /api/v1/status: {"cluster": .., "nodes": [{"node": .., ...}]}."""
    try:
        rows = json.loads(text)["nodes"]
    except (ValueError, KeyError, TypeError):
        raise PodsysError(f"the status service's answer has no node list: {text[:120]!r}") from None
    return {str(row["node"]): NodeRecord.from_mapping(row) for row in rows if isinstance(row, Mapping) and "node" in row}


BYTES_RE = re.compile(r"\bbytes=(\d+)\b")


def written_bytes(message: str) -> int | None:
    """The ramdisk reports `fetch` and `write` progress as the message `bytes=N`
    (podsys/data/ramdisk/functions.sh)."""
    found = BYTES_RE.search(message or "")
    return int(found.group(1)) if found else None


def human_bytes(n: int | None) -> str:
    if n is None:
        return ""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def clock_text(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


# ----------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class InstallPlan:
    power: tuple[str, ...] = ()  # to PXE-boot now: through the BMC, or by the admin
    watch: tuple[str, ...] = ()  # already installing: followed, not power-cycled
    installed: tuple[str, ...] = ()  # boot `local`: nothing to do

    @property
    def nodes(self) -> tuple[str, ...]:
        return self.power + self.watch

    def __bool__(self) -> bool:
        return bool(self.nodes)


def plan_installs(records: Mapping[str, NodeRecord], selected: Iterable[str] | None, resume: bool = False) -> InstallPlan:
    """Which PXE nodes (those with a record) a deploy installs. A node in `local` boot state is
    left alone, so a second deploy powers nothing. A node whose install is running is followed
    without a power cycle, unless this is --resume: then an earlier deploy gave up on it."""
    names = [n for n in (selected if selected is not None else records) if n in records]
    power, watch, installed = [], [], []
    for name in names:
        rec = records[name]
        if rec.boot != "install":
            installed.append(name)
        elif rec.state == "installing" and not resume:
            watch.append(name)
        else:
            power.append(name)
    return InstallPlan(tuple(power), tuple(watch), tuple(installed))


def plan_batches(nodes: Sequence[str], batch_size: int | None) -> list[list[str]]:
    """All at once without --batch, else `batch_size` at a time in manifest order."""
    if not nodes:
        return []
    if not batch_size:
        return [list(nodes)]
    return [list(nodes[i:i + batch_size]) for i in range(0, len(nodes), batch_size)]


# ----------------------------------------------------------------------------- the phase


@dataclass(frozen=True)
class Watch:
    """What the driver knows about one node beyond its record."""

    node: str
    since: float  # driver clock when it was powered (or the admin asked to)
    baseline: NodeRecord | None  # its record at that moment
    power_error: str = ""


@dataclass(frozen=True)
class Progress:
    node: str
    phase: Phase
    stage: str = ""
    bytes: int | None = None
    elapsed: float = 0.0
    message: str = ""

    def line(self) -> str:
        parts = [f"{self.node}: {self.phase.value}"]
        if self.stage:
            parts.append(self.stage)
        if self.bytes is not None:
            parts.append(human_bytes(self.bytes))
        parts.append(clock_text(self.elapsed))
        text = " ".join(parts)
        return f"{text} ({self.message})" if self.message else text

    def as_dict(self) -> dict:
        return {**asdict(self), "phase": self.phase.value, "elapsed": round(self.elapsed, 1)}


def _fresh(record: NodeRecord | None, baseline: NodeRecord | None) -> bool:
    """The record has news from this attempt: it changed since the node was powered."""
    return record is not None and record != baseline


def install_progress(watch: Watch, record: NodeRecord | None, ssh_error: str | None, now: float, deadline: float,
                     status_error: str = "") -> Progress:
    """The node's phase now. `ssh_error`: None = not probed yet, "" = answered, else why not."""
    elapsed = max(0.0, min(now, deadline) - watch.since)
    if watch.power_error:
        return Progress(watch.node, Phase.FAILED, "power", None, elapsed, watch.power_error)
    timed_out = now >= deadline
    if not _fresh(record, watch.baseline) or record is None:
        if timed_out:
            why = f"status service: {status_error}" if status_error else "no callback from the node"
            return Progress(watch.node, Phase.TIMED_OUT, "power-on", None, elapsed, why)
        return Progress(watch.node, Phase.POWERING, "", None, elapsed, status_error)
    count = written_bytes(record.message)
    message = "" if count is not None else record.message
    if record.state == "failed":
        return Progress(watch.node, Phase.FAILED, record.stage, count, elapsed, message)
    if record.state == "installed":
        if ssh_error == "":
            return Progress(watch.node, Phase.REACHABLE, "ssh", None, elapsed)
        if timed_out:
            return Progress(watch.node, Phase.TIMED_OUT, "installed", None, elapsed,
                            f"no SSH from its disk: {ssh_error}" if ssh_error else "no SSH from its disk")
        return Progress(watch.node, Phase.INSTALLED, "boot from disk", None, elapsed, ssh_error or "")
    if timed_out:
        return Progress(watch.node, Phase.TIMED_OUT, record.stage or "pxe", count, elapsed, message)
    if record.state == "installing":
        return Progress(watch.node, Phase.INSTALLING, record.stage, count, elapsed, message)
    return Progress(watch.node, Phase.POWERING, record.stage, count, elapsed, message)


# ----------------------------------------------------------------------------- the driver


StatusReader = Callable[[], Mapping[str, NodeRecord]]
PowerFn = Callable[[list[str]], Mapping[str, str]]  # nodes -> {node: why power failed} ("" = ok)
SSHProbe = Callable[[str, NodeRecord], str]  # node, its record -> "" when it answers, else why not
Show = Callable[[list[Progress]], None]


@dataclass
class InstallOutcome:
    progress: list[Progress] = field(default_factory=list)
    manual: list[str] = field(default_factory=list)  # nodes the admin was asked to power on

    @property
    def came_up(self) -> list[str]:
        return [p.node for p in self.progress if p.phase is Phase.REACHABLE]

    @property
    def did_not(self) -> list[Progress]:
        return [p for p in self.progress if p.phase is not Phase.REACHABLE]


def failure_reason(p: Progress) -> str:
    """What the deploy summary and its resume record say about a node that did not come up."""
    where = f"at stage {p.stage}" if p.stage else ""
    size = f", {human_bytes(p.bytes)} written" if p.bytes is not None else ""
    why = f": {p.message}" if p.message else ""
    verb = "install failed" if p.phase is Phase.FAILED else f"install {p.phase.value} after {clock_text(p.elapsed)}"
    return " ".join(x for x in (verb, where) if x) + size + why


def power_instructions(nodes: Sequence[str]) -> str:
    return (f"no BMC for {len(nodes)} node(s): power on {collapse_hosts(list(nodes))} now "
            "(they boot from the network and install)")


class InstallDriver:
    def __init__(self, read_status: StatusReader, probe_ssh: SSHProbe, *, clock: Callable[[], float],
                 sleep: Callable[[float], None], timeout_s: float, poll_s: float = DEFAULT_POLL_S,
                 show: Show = lambda progress: None, say: Callable[[str], None] = lambda line: None):
        self.read_status = read_status
        self.probe_ssh = probe_ssh
        self.clock = clock
        self.sleep = sleep
        self.timeout_s = timeout_s
        self.poll_s = poll_s
        self.show = show
        self.say = say

    def _read(self) -> tuple[Mapping[str, NodeRecord] | None, str]:
        try:
            return self.read_status(), ""
        except PodsysError as exc:
            return None, str(exc)

    def run(self, plan: InstallPlan, power: PowerFn | None, bmc_nodes: Iterable[str] = ()) -> InstallOutcome:
        """Power (or ask for) the plan's nodes, then poll until every one is final or the
        timeout passes. `power` is None when the manifest has no BMC section; `bmc_nodes` are
        the nodes it can reach (the rest are the admin's to power on)."""
        outcome = InstallOutcome()
        if not plan:
            return outcome
        records, status_error = self._read()
        records = dict(records or {})
        start = self.clock()
        deadline = start + self.timeout_s
        with_bmc = [n for n in plan.power if power is not None and n in set(bmc_nodes)]
        manual = [n for n in plan.power if n not in with_bmc]
        errors: Mapping[str, str] = {}
        if with_bmc:
            self.say(f"next boot from the network, then power cycle: {collapse_hosts(with_bmc)}")
            errors = power(with_bmc)
        if manual:
            self.say(power_instructions(manual))
            outcome.manual = manual
        if plan.watch:
            self.say(f"already installing, followed without a power cycle: {collapse_hosts(list(plan.watch))}")
        watches = {n: Watch(n, start, records.get(n), errors.get(n, "")) for n in plan.nodes}
        answered: dict[str, str | None] = {n: None for n in plan.nodes}
        # A node's result is the first final progress it reached: its elapsed is its own time to
        # SSH (or to its failure), not the time until the slowest node of the batch was done.
        final: dict[str, Progress] = {}

        def current(now: float, status_error: str) -> list[Progress]:
            return [final.get(n) or install_progress(watches[n], records.get(n), answered[n], now, deadline,
                                                     status_error) for n in plan.nodes]

        while True:
            now = self.clock()
            fresh, status_error = self._read()
            if fresh is not None:
                records = dict(fresh)
            for p in current(now, status_error):
                if p.phase is Phase.INSTALLED:
                    answered[p.node] = self.probe_ssh(p.node, records[p.node])
            progress = current(now, status_error)
            final.update((p.node, p) for p in progress if p.phase in FINAL)
            self.show(progress)
            if all(p.phase in FINAL for p in progress):
                outcome.progress = progress
                return outcome
            self.sleep(max(0.0, min(self.poll_s, deadline - now)) or self.poll_s)
