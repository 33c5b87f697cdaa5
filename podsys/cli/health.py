"""`podsys health`: the passive node checks, run on this node (see podsys/checks/health.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from podsys.cli.common import guarded

HELP = """Passive health checks of this node, in seconds: GPU count and bus ids, new hardware Xids
(with a cursor, so an Xid from before a repair does not fail forever), fabric manager,
GPUDirect, IB ports at the profile's rate, ECC/row remaps, NVLink, PCIe width, clock
throttling, disk and memory. Reads the node's profile from health.json (deploy installs
/etc/podsys/health.json). One verdict line per check; exit 1 on FAIL, 2 on a bad config.

With --slurm (as Slurm's HealthCheckProgram) a FAIL drains the node with reason
`podsys:<fault> <detail>`; a node podsys drained is resumed when healthy; other drains are
never touched. `--tier prolog` runs only the prolog tier (what Slurm's Prolog runs before a
job: GPUs present, no pending row remap, fabric manager, IB ports)."""


def register(app: typer.Typer) -> None:
    app.command("health", help=HELP, context_settings={"help_option_names": ["-h", "--help"]})(health)


@guarded
def health(
    config: Path = typer.Option(Path("/etc/podsys/health.json"), "--config", help="the node's health.json"),
    state_dir: Path = typer.Option(Path("/var/lib/podsys-health"), "--state-dir", help="where the Xid cursor lives"),
    as_json: bool = typer.Option(False, "--json", help="print the result as JSON"),
    slurm: bool = typer.Option(False, "--slurm", help="drain/resume this node in Slurm"),
    textfile: Optional[Path] = typer.Option(None, "--textfile", help="node_exporter textfile collector directory"),
    clear_xid: bool = typer.Option(False, "--clear-xid", help="after a repair: forget this boot's hardware Xids"),
    tier: str = typer.Option("passive", "--tier", help="passive: every check; prolog: only the quick gate before a job"),
) -> None:
    from podsys.checks.health_main import run
    from podsys.errors import InputError, Problem

    if tier not in ("passive", "prolog"):
        raise InputError(Problem("--tier", None, "", f"unknown tier {tier!r}; passive or prolog"))
    if tier == "prolog" and textfile is not None:
        raise InputError(Problem("--textfile", None, "", "belongs to the passive run (the prolog sees a subset)"))
    code = run(config, state_dir, as_json, slurm, textfile, clear_xid, tier=tier)
    if code:
        raise typer.Exit(code)
