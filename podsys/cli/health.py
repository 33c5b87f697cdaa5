"""`podsys health`: the passive node checks, run on this node (see podsys/checks/health.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

HELP = """Passive health checks of this node, in seconds: GPU count and bus ids, new hardware Xids
(with a cursor, so an Xid from before a repair does not fail forever), fabric manager,
GPUDirect, IB ports at the profile's rate, ECC/row remaps, NVLink, PCIe width, clock
throttling, disk and memory. Reads the node's profile from health.json (deploy installs
/etc/podsys/health.json). One verdict line per check; exit 1 on FAIL, 2 on a bad config.

With --slurm (as Slurm's HealthCheckProgram) a FAIL drains the node with reason
`podsys:<fault> <detail>`; a node podsys drained is resumed when healthy; other drains are
never touched."""


def register(app: typer.Typer) -> None:
    app.command("health", help=HELP, context_settings={"help_option_names": ["-h", "--help"]})(health)


def health(
    config: Path = typer.Option(Path("/etc/podsys/health.json"), "--config", help="the node's health.json"),
    state_dir: Path = typer.Option(Path("/var/lib/podsys-health"), "--state-dir", help="where the Xid cursor lives"),
    as_json: bool = typer.Option(False, "--json", help="print the result as JSON"),
    slurm: bool = typer.Option(False, "--slurm", help="drain/resume this node in Slurm"),
    textfile: Optional[Path] = typer.Option(None, "--textfile", help="node_exporter textfile collector directory"),
    clear_xid: bool = typer.Option(False, "--clear-xid", help="after a repair: forget this boot's hardware Xids"),
) -> None:
    from podsys.checks.health_main import run

    code = run(config, state_dir, as_json, slurm, textfile, clear_xid)
    if code:
        raise typer.Exit(code)
