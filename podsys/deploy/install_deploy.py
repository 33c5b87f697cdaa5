"""`podsys deploy` with bare-metal installs in it: the head's boot services first, then the
nodes waiting in `install` boot state are PXE-installed (all at once, or --batch N at a time,
each batch drained in Slurm first), then the Ansible layers run on every node that came up.
Nodes that did not come up are recorded as failed with their last stage, so `deploy --resume`
picks them up. Everything with side effects is passed in (InstallSteps)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

from rich.console import Console

from podsys.cluster.hostlists import collapse_hosts
from podsys.deploy.installs import (
    FINAL,
    InstallDriver,
    InstallOutcome,
    InstallPlan,
    NodeRecord,
    Phase,
    Progress,
    clock_text,
    failure_reason,
    human_bytes,
    plan_batches,
    plan_installs,
)
from podsys.deploy.rollout import jobs_on
from podsys.deploy.runner import (
    FAILED,
    DeployOptions,
    DeployResult,
    HostResult,
    _now,
    inventory_hosts,
    load_state,
    merge_state,
    select_hosts,
    write_state,
)
from podsys.errors import PodsysError

# Every drain a rolling re-image makes carries exactly this reason; only such drains are resumed.
REINSTALL_REASON = "podsys:reinstall"

# The plays the head's boot services need before any node can PXE-boot (site.yml's tags).
HEAD_BOOT_TAGS = "packages,provision"


@dataclass
class InstallSteps:
    read_status: Callable[[], Mapping[str, NodeRecord]]
    probe_ssh: Callable[[str, NodeRecord], str]
    power: Callable[[list[str]], Mapping[str, str]] | None
    bmc_nodes: list[str]
    run_deploy: Callable[[DeployOptions], DeployResult]
    clock: Callable[[], float]
    sleep: Callable[[float], None]
    show: Callable[[list[Progress]], None] = lambda progress: None
    say: Callable[[str], None] = lambda line: None
    slurm: object | None = None  # SlurmControl for --batch; None: no Slurm layer


@dataclass
class InstallSettings:
    head: str
    timeout_s: float
    poll_s: float = 5.0
    batch: int | None = None


@dataclass
class InstallDeploy:
    result: DeployResult | None = None
    installs: list[Progress] = field(default_factory=list)
    manual: list[str] = field(default_factory=list)
    batches: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"nodes": [p.as_dict() for p in self.installs],
                "came_up": [p.node for p in self.installs if p.phase is Phase.REACHABLE],
                "did_not": [{"node": p.node, "phase": p.phase.value, "stage": p.stage, "why": failure_reason(p)}
                            for p in self.installs if p.phase is not Phase.REACHABLE],
                "powered_by_hand": self.manual, "batches": self.batches}


def _combine(results: list[DeployResult]) -> DeployResult | None:
    """One result for several ansible runs: each host's last result, the worst rc."""
    if not results:
        return None
    last = results[-1]
    by_host: dict[str, HostResult] = {}
    for r in results:
        for h in r.results:
            by_host[h.name] = h
    rc = next((r.rc for r in results if r.rc != 0), 0)
    return DeployResult(list(by_host.values()), rc, last.status if rc == 0 else "failed", last.log_file, last.selected)


def install_failures(progress: list[Progress]) -> list[HostResult]:
    return [HostResult(p.node, FAILED, 0, 0, 1, 0, 0, failure_reason(p)) for p in progress if p.phase is not Phase.REACHABLE]


def _wait_for_idle(steps: InstallSteps, slurm, nodes: list[str], timeout_s: float, poll_s: float) -> bool:
    start = steps.clock()
    while jobs_on(slurm.jobs(), nodes):
        if steps.clock() - start > timeout_s:
            return False
        steps.sleep(poll_s)
    return True


def run_install_deploy(build_dir: Path, options: DeployOptions, settings: InstallSettings, steps: InstallSteps) -> InstallDeploy:
    build_dir = build_dir.resolve()
    known = inventory_hosts(build_dir / "inventory" / "hosts.yml")
    state = load_state(build_dir)
    selected = select_hosts(options, known, state)
    out = InstallDeploy()
    if selected is not None and not selected:
        out.result = steps.run_deploy(options)  # says "nothing to do" itself
        return out
    runs: list[DeployResult] = []

    def head_boot_services() -> bool:
        head_run = steps.run_deploy(DeployOptions(limit=settings.head, tags=HEAD_BOOT_TAGS, forks=options.forks,
                                                  verbosity=options.verbosity))
        runs.append(head_run)
        if not head_run.succeeded:
            out.result = head_run
        return head_run.succeeded

    try:
        records = steps.read_status()
        head_current = False
    except PodsysError as exc:
        # First deploy: no status service yet. Bring up the head's boot services, then ask again.
        why = "its boot services are not installed" if "No module named" in str(exc) else str(exc)
        steps.say(f"no install state on the head yet ({why}); setting up the head's boot services first")
        if not head_boot_services():
            return out
        records = steps.read_status()
        head_current = True
    plan = plan_installs(records, selected, resume=options.resume)
    if not plan:
        out.result = _combine([*runs, steps.run_deploy(options)])
        return out
    if not head_current:
        # Nodes are about to boot from the head: its images, ramdisk and node table must be this
        # manifest's (a changed image is copied now, not after the nodes wrote the old one).
        steps.say("updating the head's boot services before the installs (images, node table)")
        if not head_boot_services():
            return out
        records = steps.read_status()
        plan = plan_installs(records, selected, resume=options.resume)

    driver = InstallDriver(steps.read_status, steps.probe_ssh, clock=steps.clock, sleep=steps.sleep,
                           timeout_s=settings.timeout_s, poll_s=settings.poll_s, show=steps.show, say=steps.say)
    batches = plan_batches(list(plan.power), settings.batch)
    if plan.watch:
        batches = [list(plan.watch) + (batches[0] if batches else []), *batches[1:]]
    rolling = settings.batch is not None
    slurm = steps.slurm
    if rolling and slurm is not None:
        try:
            slurm.nodes()
        except PodsysError as exc:
            # A first install has no slurmctld yet: nothing runs jobs, nothing to drain.
            steps.say(f"Slurm does not answer ({exc}): batches are not drained")
            slurm = None
    done: list[str] = []
    for index, batch in enumerate(batches, 1):
        label = f"batch {index}/{len(batches)} [{collapse_hosts(batch)}]"
        drained: list[str] = []
        if rolling and slurm is not None:
            drained = _drain(slurm, batch, steps, settings, label)
            if drained is None:
                out.batches.append({"nodes": batch, "result": "jobs still running"})
                break
        if rolling:
            steps.say(f"{label}: installing")
        batch_plan = InstallPlan(tuple(n for n in batch if n in plan.power), tuple(n for n in batch if n in plan.watch))
        outcome: InstallOutcome = driver.run(batch_plan, steps.power, steps.bmc_nodes)
        out.installs.extend(outcome.progress)
        out.manual.extend(outcome.manual)
        for p in outcome.did_not:
            steps.say(f"{p.node}: did not come up: {failure_reason(p)}")
        done.extend(batch)
        if rolling:
            back = _configure_and_resume(batch, outcome.came_up, drained, slurm, steps, settings, options, runs, label)
            out.batches.append({"nodes": batch, "came_up": outcome.came_up, "result": "ok" if back else "failed"})
            if not back:
                steps.say(f"{label}: not every node came back; the rollout stops here")
                break

    missed = {p.node for p in out.installs if p.phase is not Phase.REACHABLE}
    # Nodes of a batch never reached (a rollout that stopped) stay as they were, recorded as
    # failed so that `deploy --resume` re-images them.
    pending = [n for n in plan.nodes if n not in done]
    stopped_at = out.batches[-1] if out.batches else {}
    hosts = [h for h in (selected if selected is not None else known)
             if h not in missed and h not in pending and (not rolling or h not in done)]
    if any(p.phase is Phase.REACHABLE for p in out.installs) and settings.head not in hosts and not rolling:
        hosts.insert(0, settings.head)  # the head's slurm.conf and scrape targets learn the new nodes' facts
    if hosts and (not rolling or [h for h in hosts if h != settings.head]):
        runs.append(steps.run_deploy(DeployOptions(limit=",".join(hosts), forks=options.forks,
                                                   verbosity=options.verbosity)))
    failures = install_failures(out.installs) + [
        HostResult(n, FAILED, 0, 0, 1, 0, 0, f"not reinstalled: the rolling re-image stopped at batch "
                                             f"{len(out.batches)} ({stopped_at.get('result', '')})")
        for n in pending]
    if failures:
        write_state(build_dir, merge_state(load_state(build_dir), failures, _now()))
    combined = _combine(runs)
    if combined is None:
        combined = DeployResult([], 0, "successful", build_dir / "logs", selected)
    if failures:
        names = {f.name for f in failures}
        combined = DeployResult([h for h in combined.results if h.name not in names] + failures,
                                combined.rc, combined.status, combined.log_file, combined.selected)
    out.result = combined
    return out


def _drain(slurm, batch: list[str], steps: InstallSteps, settings: InstallSettings, label: str) -> list[str] | None:
    """Drain the batch's nodes that are in service and wait for their jobs; the drained nodes,
    or None when jobs still run at the timeout (the drains are lifted again)."""
    current = slurm.nodes()
    # An admin's drain (or a down node) keeps its own reason: never overwritten, never resumed.
    drained = [n for n in batch if n in current and not current[n].drain_set
               and current[n].state not in ("down", "future")]
    if drained:
        slurm.drain(drained, REINSTALL_REASON)
        steps.say(f"{label}: drained {collapse_hosts(drained)} (reason {REINSTALL_REASON!r})")
    if _wait_for_idle(steps, slurm, batch, settings.timeout_s, settings.poll_s):
        return drained
    if drained:
        slurm.resume(drained)
    steps.say(f"{label}: jobs still running after {settings.timeout_s:.0f} s: nothing reinstalled, "
              "the rollout stops here")
    return None


def _configure_and_resume(batch: list[str], up: list[str], drained: list[str], slurm, steps: InstallSteps, settings: InstallSettings,
                          options: DeployOptions, runs: list[DeployResult], label: str) -> bool:
    """The layers on the head and the batch's nodes that came up, then resume those the
    Ansible run left ok; True when every node of the batch is back."""
    ok: set[str] = set()
    if up:
        run = steps.run_deploy(DeployOptions(limit=",".join([settings.head, *up]), forks=options.forks,
                                             verbosity=options.verbosity))
        runs.append(run)
        ok = {h.name for h in run.results if h.status == "ok"}
    if slurm is not None and drained:
        current = slurm.nodes()  # one scontrol read for the batch, not one per node
        back = [n for n in drained if n in ok and _ours(current.get(n), REINSTALL_REASON)]
        if back:
            slurm.resume(back)
            steps.say(f"{label}: resumed {collapse_hosts(back)}")
    return set(batch) <= ok


def _ours(current, reason: str) -> bool:
    return current is not None and current.drain_set and current.reason == reason


def make_display(console: Console):
    """(show, close): a live table per node on a terminal, else one plain line per change."""
    if not console.is_terminal:
        last: dict[str, str] = {}

        def show_plain(progress: list[Progress]) -> None:
            for p in progress:
                key = f"{p.phase.value}|{p.stage}|{p.message}"
                if last.get(p.node) != key:
                    last[p.node] = key
                    console.print(p.line(), markup=False, highlight=False)
        return show_plain, lambda: None

    from rich.live import Live
    from rich.table import Table
    from rich.text import Text

    style = {Phase.REACHABLE: "green", Phase.FAILED: "bold red", Phase.TIMED_OUT: "bold red",
             Phase.INSTALLING: "yellow", Phase.INSTALLED: "cyan"}

    def table(progress: list[Progress]) -> Table:
        t = Table(title="installs", title_justify="left")
        for col in ("node", "phase", "stage", "written", "elapsed", "message"):
            t.add_column(col)
        for p in progress:
            t.add_row(p.node, Text(p.phase.value, style=style.get(p.phase, "")), p.stage,
                      human_bytes(p.bytes), clock_text(p.elapsed), Text(p.message[:60]))
        return t

    # Started on the first update and stopped once every node is final: the Ansible runs before
    # and after have their own live display, and rich allows one at a time.
    holder: dict[str, Live] = {}

    def show_live(progress: list[Progress]) -> None:
        if "live" not in holder:
            holder["live"] = Live(table(progress), console=console, refresh_per_second=2, transient=False)
            holder["live"].start()
        holder["live"].update(table(progress), refresh=True)
        if all(p.phase in FINAL for p in progress):
            holder.pop("live").stop()

    def close() -> None:
        if "live" in holder:
            holder.pop("live").stop()
    return show_live, close
