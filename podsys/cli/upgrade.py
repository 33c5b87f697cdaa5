"""`podsys upgrade`: a rolling stack upgrade, batch by batch, gated by the acceptance checks."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import typer

from podsys.cli.common import console, err_console, guarded
from podsys.cli.deploy import FOUND_MANIFEST_ARG, find_manifest
from podsys.errors import InputError, Problem

HELP = """Upgrade the nodes to another stack, a batch at a time, gated by acceptance.

For each batch of --batch nodes (manifest order, or --limit's): drain them in Slurm with the
reason `podsys:upgrade to STACK`, wait for their running jobs to finish (--force: requeue them,
or cancel those that cannot be requeued), deploy the new stack on the batch (the roles reboot
a node whose driver or OFED changed), run the GPU/InfiniBand/NCCL acceptance checks on it, and
resume the nodes that pass. The first batch with a failing node stops the rollout: its nodes
stay drained and are named with their findings (exit 1).

The driver of the stack the nodes run now (the manifest's `stack:`) is replaced without
gpu.replace_driver: podsys installed it; a node with any other driver still stops the batch.
--extra-vars FILE hands role variables to the deploys (e.g. another package repository).

Only drains podsys upgrade made are ever resumed: a node an admin (or a health check) drained
is upgraded but left drained, its reason untouched.

The manifest file is not changed: once every batch passed, set `stack: STACK` in it so later
deploys keep the new stack."""


def _split(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def register(app: typer.Typer) -> None:
    app.command("upgrade", help=HELP)(upgrade)


@guarded
def upgrade(
    manifest: Optional[Path] = FOUND_MANIFEST_ARG,
    stack: str = typer.Option(..., "--stack", help="the stack to move to, an id from `podsys compat list`"),
    batch: int = typer.Option(1, "--batch", help="nodes upgraded at a time"),
    force: bool = typer.Option(False, "--force", help="requeue (or cancel) running jobs instead of waiting for them"),
    limit: Optional[str] = typer.Option(None, "--limit", "-l", help="only these nodes, a hostlist: 'gpu[001-016]'"),
    checks: str = typer.Option("versions,gpu,bandwidth,infiniband,nccl", "--checks",
                               help="acceptance areas a batch must pass (comma-separated)"),
    wait_timeout: int = typer.Option(0, "--wait-timeout", min=0,
                                     help="seconds to wait for a batch's jobs (0: no limit); past it the batch's nodes are resumed and the rollout stops"),
    reboot_command: Optional[str] = typer.Option(None, "--reboot-command",
                                                 help="run here to restart a node instead of rebooting it over SSH ({node} is its name), for machines that cannot restart themselves (lab containers)"),
    extra_vars: Optional[Path] = typer.Option(None, "--extra-vars", "-e",
                                              help="YAML file of role variables for the deploys (role defaults, never podsys_*), e.g. another package repository"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="build directory (default: .podsys/build beside the manifest)"),
    as_json: bool = typer.Option(False, "--json", help="print the rollout (batches, nodes, findings) as JSON on stdout"),
) -> None:
    from podsys.checks.registry import LIVE_AREAS
    from podsys.checks.runner import AccessSettings, SSHExecutor, run_checks
    from podsys.cluster.selection import select_nodes
    from podsys.deploy.rollout import Rollout
    from podsys.deploy.runner import DeployLock, DeployOptions, run_deploy
    from podsys.cluster.load import load_cluster
    from podsys.deploy.upgrade import (NoSlurm, SlurmControl, Upgrade, UpgradeOptions, hostlist_of, load_cluster_with_stack,
                                       read_extra_vars, upgrade_extravars)
    from podsys.render.build import render_cluster

    areas = _split(checks)
    unknown = [a for a in areas if a not in LIVE_AREAS]
    if unknown or not areas:
        raise InputError(Problem("--checks", None, "", f"unknown area {', '.join(unknown) or '(none given)'}; areas: {', '.join(LIVE_AREAS)}"))
    if batch < 1:
        raise InputError(Problem("--batch", None, "", f"must be 1 or more, got {batch}"))
    path = find_manifest(manifest)
    current = load_cluster(path)  # the stack the nodes run now: its driver may be replaced
    cluster = load_cluster_with_stack(path, stack)
    extra = read_extra_vars(extra_vars) if extra_vars is not None else {}
    nodes = [n.name for n in select_nodes(cluster, limit, "--limit")]
    build_dir = (output or cluster.default_build_dir).resolve()
    rollout = Rollout.plan(cluster.stack.id, nodes, batch)
    extravars = upgrade_extravars(getattr(current.stack, "driver", None), getattr(cluster.stack, "driver", None),
                                  reboot_command, extra)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    report_dir = cluster.workspace.check_run_dir(datetime.now(timezone.utc)).parent / f"upgrade-{stamp}"

    def deploy(batch_nodes: list[str]) -> dict[str, str]:
        result = run_deploy(build_dir, DeployOptions(limit=hostlist_of(batch_nodes)), err_console, extravars=extravars)
        failed = {r.name: r.reason or r.status for r in result.failed_hosts}
        if result.rc != 0 and not failed:
            failed = {n: f"ansible-playbook rc {result.rc} (log: {result.log_file})" for n in batch_nodes}
        return failed

    def check(batch_nodes: list[str], out_dir: Path) -> list:
        return run_checks(cluster, only=list(areas), skip=[], limit=hostlist_of(batch_nodes), output_dir=out_dir,
                          console=err_console)

    err_console.print(f"upgrade to {cluster.stack.id}: {len(nodes)} node(s) in {len(rollout.batches)} batch(es) of {batch}; "
                      f"reports under {report_dir}", markup=False, highlight=False)
    executor = SSHExecutor(AccessSettings.from_cluster(cluster))
    try:
        with DeployLock(cluster.workspace.deploy_lock(cluster.name), cluster.name):
            render_cluster(cluster, build_dir)
            options = UpgradeOptions(stack=cluster.stack.id, batch_size=batch, force=force, check_areas=areas,
                                     wait_timeout=wait_timeout, extravars=extravars)
            with_slurm = any("slurm" in n.layers for n in cluster.nodes)
            slurm = SlurmControl(executor, cluster.access.head_name) if with_slurm else NoSlurm()
            Upgrade(rollout, slurm, deploy, check, options, err_console,
                    report_dir).run()
    finally:
        executor.close()

    if as_json:
        print(json.dumps({**rollout.as_dict(), "manifest": str(path), "reports": str(report_dir)}, indent=2))
    failed = rollout.failed_batch
    if failed is None:
        # with --json, stdout carries the JSON alone
        (err_console if as_json else console).print(f"upgrade to {cluster.stack.id} done on {hostlist_of(nodes)}; set `stack: {cluster.stack.id}` "
                      f"in {path} so later deploys keep it", markup=False, highlight=False)
        return
    names = [n for n in failed.nodes if failed.failures.get(n)] or failed.nodes
    err_console.print(f"upgrade stopped at batch {failed.index}: {hostlist_of(names)} failed", markup=False, highlight=False)
    for n in names:
        for line in failed.failures.get(n, []) or failed.failures.get("batch", []):
            err_console.print(f"  {n}: {line}", markup=False, highlight=False)
    untouched = [n for b in rollout.batches if b.phase.value == "not-started" for n in b.nodes]
    if untouched:
        err_console.print(f"not upgraded: {hostlist_of(untouched)}", markup=False, highlight=False)
    raise typer.Exit(1)
