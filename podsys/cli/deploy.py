"""`podsys deploy`: render the build directory, then run the playbooks against the cluster."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from podsys.cli.common import check_url, console, err_console, guarded
from podsys.errors import InputError, Problem

DEFAULT_MANIFESTS = ("cluster.yaml", "lab.yaml")
# The MANIFEST argument of every command that finds its manifest with find_manifest.
FOUND_MANIFEST_ARG = typer.Argument(None, help="cluster manifest (default: ./cluster.yaml, else ./lab.yaml)")


def find_manifest(given: Optional[Path]) -> Path:
    """The manifest to deploy: the one given, else cluster.yaml, else lab.yaml (what
    `podsys lab up` writes) in the current directory."""
    if given is not None:
        if not given.is_file():
            raise InputError(Problem(str(given), None, "", "file not found"))
        return given
    for name in DEFAULT_MANIFESTS:
        if Path(name).is_file():
            return Path(name)
    raise InputError(Problem(
        "command line", None, "MANIFEST",
        f"no manifest given and neither {' nor '.join(DEFAULT_MANIFESTS)} in {Path.cwd()}",
    ))


HELP = (
    "Render the build directory, then configure every host with Ansible: the head's "
    "package service, base system, Slurm, the GPU/InfiniBand/container stack and "
    "monitoring (whichever layers the manifest enables).\n\n"
    "Shows live progress per host and role, ends with a per-host summary "
    "(ok/changed/failed/unreachable) and exits non-zero if any host failed. A failed or "
    "unreachable host never stops the others; retry just those with --resume. "
    "Full logs: the build directory's logs/ folder.\n\n"
    "Bare metal: after the head's boot services, nodes in `install` boot state (new ones, or "
    "after `podsys reinstall`) are PXE-installed first: through their BMCs (next boot PXE, power "
    "cycle) when the manifest has a `bmc` section, else podsys names the nodes to power on. A "
    "live line per node shows stage, bytes written and time; the layers then run on every node "
    "that came up, and each node that did not is named with its last stage (--resume retries it)."
)


def register(app: typer.Typer) -> None:
    app.command("deploy", help=HELP)(deploy)


@guarded
def deploy(
    manifest: Optional[Path] = FOUND_MANIFEST_ARG,
    limit: Optional[str] = typer.Option(None, "--limit", "-l", help="only these hosts, as a hostlist: 'head,node[01-04]'"),
    tags: Optional[str] = typer.Option(None, "--tags", "-t", help="only these parts, comma-separated: packages,base,provision,slurm,accounting,storage,training,web,notebooks,models,gpu,monitoring,health"),
    check: bool = typer.Option(False, "--check", help="dry run: Ansible check mode with diffs; changes nothing"),
    forks: int = typer.Option(20, "--forks", "-f", min=1, max=1000, help="hosts configured in parallel"),
    resume: bool = typer.Option(False, "--resume", help="re-run only the hosts that failed or were unreachable last time"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="build directory (default: .podsys/build beside the manifest)"),
    verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="Ansible verbosity (-v .. -vvvv), in the log"),
    as_json: bool = typer.Option(False, "--json", help="print the per-host result as JSON on stdout"),
    install_timeout: float = typer.Option(30.0, "--install-timeout", min=0.1, metavar="MINUTES",
                                          help="bare metal: minutes to wait for the installs (each batch's)"),
    batch: Optional[int] = typer.Option(None, "--batch", min=1, metavar="N",
                                        help="bare metal: re-image N nodes at a time (rolling; each batch drained "
                                             "in Slurm first, resumed once its layers are back)"),
    status_url: Optional[str] = typer.Option(None, "--status-url", help="read install progress from this status "
                                             "service (http://HEAD:8081) instead of over SSH on the head"),
) -> None:
    from podsys.cluster.load import load_cluster
    from podsys.cluster.secret_files import refuse_open_permissions
    from podsys.render.build import render_cluster
    from podsys.deploy.runner import DeployLock, DeployOptions, run_deploy, summary_table

    path = find_manifest(manifest)
    cluster = load_cluster(path)
    if cluster.manifest.access.private_key_file:
        key = Path(cluster.manifest.access.private_key_file).expanduser()
        refuse_open_permissions(key if key.is_absolute() else cluster.base_dir / key, "access.private_key_file")
    build_dir = (output or cluster.default_build_dir).resolve()
    options = DeployOptions(limit=limit, tags=tags, check=check, forks=forks, resume=resume, verbosity=verbose)
    lock_path = cluster.workspace.deploy_lock(cluster.name)
    if status_url is not None:
        check_url("--status-url", status_url, "http://10.0.0.1:8081")
    if batch is not None and (tags is not None or check):
        raise InputError(Problem("command line", None, "--batch",
                                 "a rolling re-image runs the whole deploy: not with --tags or --check"))
    installs = None
    # Progress goes to stderr so --json output on stdout stays clean.
    with DeployLock(lock_path, cluster.name):
        render_cluster(cluster, build_dir)
        if tags is None and not check and any(n.pxe for n in cluster.nodes):
            from podsys.deploy.install_wiring import deploy_with_installs

            installs = deploy_with_installs(cluster, build_dir, options, err_console, timeout_s=install_timeout * 60,
                                            batch=batch, status_url=status_url)
            result = installs.result
        else:
            result = run_deploy(build_dir, options, err_console)
    from podsys.deploy.fingerprint import site_fingerprint_line

    if fingerprint := site_fingerprint_line(result.log_file):  # web layers: users compare it in their browser
        err_console.print(fingerprint, markup=False, highlight=False, soft_wrap=True, emoji=False)
    if as_json:
        print(json.dumps({**result.as_dict(), **({"installs": installs.as_dict()} if installs else {})}, indent=2))
    elif result.results:
        console.print(summary_table(result.results))
        console.print(f"log: {result.log_file}", markup=False, highlight=False)
    if not result.succeeded:
        failed = ", ".join(r.name for r in result.failed_hosts) or f"ansible-playbook rc {result.rc}"
        err_console.print(f"deploy failed on: {failed} (retry them with: podsys deploy {path} --resume)", markup=False)
        raise typer.Exit(1)
