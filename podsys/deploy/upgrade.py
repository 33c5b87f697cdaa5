"""`podsys upgrade`, the side effects: batch by batch, drain the nodes in Slurm (on the head,
over SSH), wait for their jobs (or requeue/cancel them with --force), deploy the new stack on
the batch (the roles reboot where they must), run the acceptance checks on it, resume the nodes
that pass, and stop at the first batch that fails. The decisions are in rollout.py.

The new stack is a render input, not an edit of the manifest: the manifest is the user's file
(comments, layout, version control) and no podsys command but `init` writes it; the override
goes through the same validation as a manifest `stack:` (the matrix's OS, hardware and
InfiniBand rules), and the rendered build directory carries it to the roles."""

from __future__ import annotations

import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Protocol, Sequence

from podsys.cluster.hostlists import collapse_hosts
from rich.console import Console

from podsys.checks.live import Probe, ProbeResult
from podsys.cluster.model import Cluster
from podsys.cluster.resolve import validate_and_resolve
from podsys.cluster.address_file import read_allocation
from podsys.cluster.yaml_source import load_yaml_file
from podsys.deploy.rollout import (
    SQUEUE_FORMAT, BatchState, DrainAction, Phase, Rollout, SlurmJob, SlurmNode, drain_action, failures_by_node,
    jobs_on, parse_scontrol_show_node, parse_squeue, resume_decision, upgrade_reason,
)
from podsys.errors import InputError, PodsysError, Problem


# ----------------------------------------------------------------------------- the new stack


def load_cluster_with_stack(path: Path, stack_id: str) -> Cluster:
    """The manifest resolved as if its `stack:` said `stack_id`: every matrix rule applies. A
    problem with the stack is reported against --stack, the rest against the manifest."""
    path = Path(path).absolute()
    data, smap = load_yaml_file(path)
    if isinstance(data, dict):
        data = {**data, "stack": stack_id}
    try:
        return validate_and_resolve(data, smap, path, previous=read_allocation(path))
    except InputError as exc:
        raise InputError([Problem("--stack", None, "", p.message) if p.field == "stack" else p
                          for p in exc.problems]) from None


def read_extra_vars(path: Path) -> dict:
    """--extra-vars FILE: a YAML mapping of role variables for this upgrade's deploys (role
    defaults such as package_source_bundle_repo_url, node_reboot_timeout). The podsys_*
    variables are the manifest's, rendered: they are refused here, so the manifest stays the
    one place that says what a cluster is."""
    data, smap = load_yaml_file(Path(path))
    if not isinstance(data, dict):
        raise InputError(Problem(str(path), 1, "", "must be a mapping of variable names to values"))
    problems = []
    for key in data:
        if not isinstance(key, str) or not key.isidentifier():
            problems.append(smap.problem((key,), "not a variable name"))
        elif key.startswith("podsys_"):
            problems.append(smap.problem((key,), "podsys_* variables come from the manifest; change it there"))
    if problems:
        raise InputError(problems)
    return data


def upgrade_extravars(from_driver: str | None, to_driver: str | None, reboot_command: str | None = None,
                      extra: Mapping | None = None) -> dict:
    """What the upgrade's deploys get on top of the rendered build: the driver of the stack it
    moves from may be replaced (podsys installed it; a node with any other driver still stops),
    and the controller-side restart for machines that cannot reboot themselves."""
    out = dict(extra or {})
    if from_driver and from_driver != to_driver:
        out["nvidia_driver_replaceable"] = [from_driver]
    if reboot_command:
        out["node_reboot_controller_command"] = reboot_command
    return out


# ----------------------------------------------------------------------------- Slurm on the head


class Shell(Protocol):
    def run(self, probe: Probe) -> ProbeResult: ...


def hostlist_of(nodes: Sequence[str]) -> str:
    return collapse_hosts(list(nodes))


class SlurmControl:
    """scontrol/squeue on the head (the slurmctld host), through the checks' SSH executor."""

    def __init__(self, shell: Shell, head: str, timeout: int = 60):
        self.shell = shell
        self.head = head
        self.timeout = timeout

    def _run(self, name: str, command: str, check: bool = True) -> ProbeResult:
        result = self.shell.run(Probe(self.head, name, command, self.timeout))
        if check and (not result.ran or result.rc != 0):
            why = result.error or (result.stderr or result.stdout).strip().splitlines()[-1:] or [f"rc {result.rc}"]
            raise PodsysError(f"{self.head}: `{command}` failed: {why if isinstance(why, str) else why[0]}")
        return result

    def nodes(self) -> dict[str, SlurmNode]:
        return parse_scontrol_show_node(self._run("scontrol-show-node", "scontrol show node").stdout)

    def jobs(self) -> list[SlurmJob]:
        return parse_squeue(self._run("squeue", f"squeue -h -o {shlex.quote(SQUEUE_FORMAT)}").stdout)

    def drain(self, nodes: Sequence[str], reason: str) -> None:
        self._run("drain", f"scontrol update nodename={shlex.quote(hostlist_of(nodes))} state=drain "
                           f"reason={shlex.quote(reason)}")

    def resume(self, nodes: Sequence[str]) -> None:
        self._run("resume", f"scontrol update nodename={shlex.quote(hostlist_of(nodes))} state=resume")

    def requeue_or_cancel(self, job_id: str) -> str:
        """Requeue a job (it runs again elsewhere); a job that cannot be requeued (--no-requeue,
        or requeue off in slurm.conf) is cancelled."""
        jid = shlex.quote(job_id)
        result = self._run("requeue", f"scontrol requeue {jid} && echo requeued || (scancel {jid} && echo cancelled)")
        return result.stdout.strip().splitlines()[-1] if result.stdout.strip() else "requeued"


class NoSlurm:
    """A cluster without the Slurm layer: nothing to drain, no jobs, nothing to resume."""

    def nodes(self) -> dict[str, SlurmNode]:
        return {}

    def jobs(self) -> list[SlurmJob]:
        return []


# ----------------------------------------------------------------------------- the rollout


@dataclass
class UpgradeOptions:
    stack: str
    batch_size: int = 1
    force: bool = False
    check_areas: tuple[str, ...] = ()
    wait_timeout: float = 0  # seconds for running jobs to finish; 0 = no limit
    poll_interval: float = 10
    forks: int = 20
    extravars: Mapping = field(default_factory=dict)


DeployFn = Callable[[list[str]], dict[str, str]]  # batch -> {node: why it failed}
CheckFn = Callable[[list[str], Path], list]  # batch, output dir -> findings


class Upgrade:
    """Drives one rollout. deploy and check are passed in so the driver stays small; the CLI
    wires them to run_deploy and run_checks."""

    def __init__(self, rollout: Rollout, slurm: SlurmControl, deploy: DeployFn, check: CheckFn,
                 options: UpgradeOptions, console: Console, report_dir: Path,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic):
        self.rollout = rollout
        self.slurm = slurm
        self.deploy = deploy
        self.check = check
        self.options = options
        self.console = console
        self.report_dir = report_dir
        self.sleep = sleep
        self.clock = clock

    def say(self, batch: BatchState, message: str) -> None:
        total = len(self.rollout.batches)
        self.console.print(f"batch {batch.index}/{total} [{hostlist_of(batch.nodes)}]: {message}",
                           markup=False, highlight=False)

    def run(self) -> Rollout:
        for batch in self.rollout.batches:
            try:
                self.run_batch(batch)
            except PodsysError as exc:
                batch.failures.setdefault("batch", []).append(str(exc))
                batch.step("error", str(exc))
                self.say(batch, f"FAILED: {exc}")
            if batch.phase is Phase.FAILED:
                self.rollout.stop_after(batch)
                break
        return self.rollout

    def run_batch(self, batch: BatchState) -> None:
        reason = upgrade_reason(self.rollout.stack)
        known = self.slurm.nodes()
        actions = {n: drain_action(known.get(n)) for n in batch.nodes}
        to_drain = [n for n, a in actions.items() if a is DrainAction.DRAIN]
        for n, a in actions.items():
            if a is DrainAction.FOREIGN:
                node = known[n]
                self.say(batch, f"{n} is {node.state}{'+drain' if node.drain_set else ''} for someone else "
                                f"({node.reason or 'no reason'}): upgraded, left as it is afterwards")
            elif a is DrainAction.OURS:
                self.say(batch, f"{n} already drained by an earlier podsys upgrade")
        if to_drain:
            self.slurm.drain(to_drain, reason)
            batch.drained = to_drain
        batch.step("drain", f"drained {hostlist_of(to_drain)}" if to_drain else "nothing to drain")
        self.say(batch, f"draining {hostlist_of(to_drain)} (reason {reason!r})" if to_drain else "nothing to drain")

        if not self.wait_for_jobs(batch):
            # Nothing was installed: the nodes are as good as before, give them back.
            self.resume_ours(batch, {n: True for n in batch.nodes})
            batch.step("timeout", f"jobs still running after {self.options.wait_timeout:.0f} s")
            self.say(batch, f"FAILED: {batch.note}")
            return
        batch.step("jobs-done")

        self.say(batch, f"installing stack {self.rollout.stack} (reboots where the roles say so)")
        deploy_failures = self.deploy(batch.nodes)
        for node, why in deploy_failures.items():
            batch.failures.setdefault(node, []).append(f"deploy: {why}")
            self.say(batch, f"{node}: deploy failed: {why}")
        installed = [n for n in batch.nodes if n not in deploy_failures]
        batch.step("installed" if installed else "install-failed")
        if not installed:
            self.say(batch, "FAILED: the deploy failed on every node; they stay drained")
            return

        self.say(batch, f"checking {hostlist_of(installed)} ({', '.join(self.options.check_areas)})")
        findings = self.check(installed, self.report_dir / f"batch-{batch.index}")
        for node, lines in failures_by_node(findings, installed).items():
            if lines:
                batch.failures.setdefault(node, []).extend(lines)
        passed = {n: not batch.failures.get(n) for n in batch.nodes}
        self.resume_ours(batch, passed)
        if all(passed.values()):
            batch.step("passed", "every node passed")
            self.say(batch, "done: " + (f"resumed {hostlist_of(batch.resumed)}" if batch.resumed else "nothing to resume")
                     + (f"; left drained {', '.join(batch.left_drained)}" if batch.left_drained else ""))
        else:
            bad = [n for n, ok in passed.items() if not ok]
            batch.step("checks-failed", f"failed: {hostlist_of(bad)}")
            for n in bad:
                self.say(batch, f"FAILED {n}: " + "; ".join(batch.failures[n]))
            self.say(batch, f"stopping the rollout; {hostlist_of(bad)} stay drained")

    def wait_for_jobs(self, batch: BatchState) -> bool:
        """True once no job holds a batch node. --force requeues (or cancels) them instead."""
        started = self.clock()
        announced: set[str] = set()
        while True:
            running = jobs_on(self.slurm.jobs(), batch.nodes)
            if not running:
                return True
            if self.options.force:
                for job in running:
                    if job.job_id not in batch.jobs:
                        batch.jobs[job.job_id] = self.slurm.requeue_or_cancel(job.job_id)
                        self.say(batch, f"--force: job {job.job_id} on {hostlist_of(job.nodes)} {batch.jobs[job.job_id]}")
            else:
                for job in running:
                    batch.jobs[job.job_id] = "waited for"
                fresh = [j.job_id for j in running if j.job_id not in announced]
                if fresh:
                    announced.update(fresh)
                    self.say(batch, f"waiting for {len(running)} running job(s): {', '.join(j.job_id for j in running)}")
                if self.options.wait_timeout and self.clock() - started > self.options.wait_timeout:
                    return False
            self.sleep(self.options.poll_interval)

    def resume_ours(self, batch: BatchState, passed: Mapping[str, bool]) -> None:
        """Resume the nodes that passed and still carry podsys upgrade's drain, read back from
        slurmctld right now; everything else stays as it is, with the reason recorded."""
        current = self.slurm.nodes()
        decisions = [resume_decision(n, current.get(n), passed.get(n, False), batch.failures.get(n, ()))
                     for n in batch.nodes]
        to_resume = [d.node for d in decisions if d.resume]
        if to_resume:
            self.slurm.resume(to_resume)
            batch.resumed = to_resume
        for d in decisions:
            if not d.resume and current.get(d.node) is not None and current[d.node].drain_set:
                batch.left_drained[d.node] = d.why
