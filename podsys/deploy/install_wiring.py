"""Wires `podsys deploy`'s install steps (podsys/deploy/install_deploy.py) to the real cluster:
the head's install state over SSH (or --status-url), the BMCs, the SSH probe, Slurm on the
head for --batch, ansible-runner, the wall clock."""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console

from podsys.cluster.model import Cluster
from podsys.deploy.install_deploy import InstallDeploy, InstallSettings, InstallSteps, make_display, run_install_deploy
from podsys.deploy.runner import DeployOptions, run_deploy


def deploy_with_installs(cluster: Cluster, build_dir: Path, options: DeployOptions, console: Console, *,
                         timeout_s: float, batch: int | None, status_url: str | None) -> InstallDeploy:
    from podsys.deploy.install_backends import SSHProbe, bmc_power, head_records, url_records
    from podsys.deploy.node_images import ensure_node_images
    from podsys.deploy.runner import inventory_hosts, load_state, select_hosts

    # A bad --limit is refused before any BMC password is read or any host contacted.
    select_hosts(options, inventory_hosts(build_dir / "inventory" / "hosts.yml"), load_state(build_dir))
    # The head serves the images from the first deploy on (the provision role copies them).
    ensure_node_images(cluster, lambda line: console.print(line, markup=False, highlight=False))
    power, bmc_nodes = bmc_power(cluster)
    probe = SSHProbe(cluster)
    slurm = None
    if batch is not None and any("slurm" in n.layers for n in cluster.nodes):
        from podsys.checks.runner import AccessSettings, SSHExecutor
        from podsys.deploy.upgrade import SlurmControl

        slurm = SlurmControl(SSHExecutor(AccessSettings.from_cluster(cluster)), cluster.access.head_name)
    show, close = make_display(console)
    steps = InstallSteps(
        read_status=(lambda: url_records(status_url)) if status_url else (lambda: head_records(cluster)),
        probe_ssh=probe,
        power=power,
        bmc_nodes=bmc_nodes,
        run_deploy=lambda opts: run_deploy(build_dir, opts, console),
        clock=time.monotonic,
        sleep=time.sleep,
        show=show,
        say=lambda line: console.print(line, markup=False, highlight=False),
        slurm=slurm,
    )
    try:
        return run_install_deploy(build_dir, options,
                                  InstallSettings(head=cluster.access.head_name, timeout_s=timeout_s, batch=batch),
                                  steps)
    finally:
        close()
        probe.close()
        if slurm is not None:
            slurm.shell.close()
