"""`podsys check`: acceptance checks on the deployed cluster, and `podsys check parse` for a
tool output saved by hand."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

from podsys.cli.common import EXIT_FAILURE, EXIT_OK, console, err_console, guarded
from podsys.errors import InputError, Problem

HELP = """Acceptance checks: prove the cluster performs as its hardware should.

`podsys check [MANIFEST]` runs the checks over SSH on every node (or --limit), in parallel,
saves every raw tool output under OUTPUT/raw/, prints one table per area (failures first) and
writes OUTPUT/report.json and OUTPUT/report.html. Thresholds come from each node's hardware
profile (`acceptance` entries: limit x fraction, with their source).

Areas for --only/--skip (a check name such as gpu.nvlink also works): versions, gpu,
bandwidth, infiniband, nccl, slurm, monitoring, network.

`--via-slurm` runs the heavy tests (DCGM diag, NCCL, nvbandwidth, ib_write_bw) as Slurm jobs in
a reservation made for the run on the nodes Slurm reports idle (and deleted after); a busy
node's heavy checks are SKIP with the reason. Same judges, same report.

`podsys check parse KIND FILE` judges one saved tool output (FILE - reads stdin), for example:
podsys check parse nccl all_reduce.log --profile hgx-h100-8gpu

Kinds: nccl, perftest, ibstat, ib-counters, nvidia-smi-topo, nvidia-smi-query, nvidia-smi-q,
nvidia-smi-nvlink, dcgmi-diag, nvbandwidth, dmesg, lspci, modules, prometheus-targets.
Input that is not that kind's output (empty, binary, another tool's, over 16 MiB) is exit 2.

Exit code: 0 nothing FAILs, 1 something FAILs, 2 bad input."""


def register(app: typer.Typer) -> None:
    app.command(
        "check",
        help=HELP,
        context_settings={"help_option_names": ["-h", "--help"]},
    )(check)


def _split(values: Optional[List[str]]) -> list[str]:
    return [part.strip() for value in values or [] for part in value.split(",") if part.strip()]


@guarded
def check(
    args: Optional[List[str]] = typer.Argument(None, metavar="[MANIFEST] | parse KIND FILE",
                                               help="cluster manifest (default ./cluster.yaml), or `parse KIND FILE`"),
    only: Optional[List[str]] = typer.Option(None, "--only", help="run only these areas/checks (comma-separated or repeated)"),
    skip: Optional[List[str]] = typer.Option(None, "--skip", help="leave out these areas/checks"),
    limit: Optional[str] = typer.Option(None, "--limit", help="only these nodes, a hostlist such as gpu[001-004]"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="report directory (default: MANIFEST_DIR/.podsys/check/UTC-TIME)"),
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON on stdout instead of tables"),
    profile: Optional[str] = typer.Option(None, "--profile", help="parse: hardware profile whose thresholds apply, e.g. hgx-h100-8gpu"),
    node: Optional[str] = typer.Option(None, "--node", help="parse: node (or pair) name to report (default: the file name)"),
    collective: Optional[str] = typer.Option(None, "--collective", help="parse nccl: all_reduce, all_gather, reduce_scatter or alltoall when the output does not say"),
    workers: int = typer.Option(16, "--workers", min=1, max=256, help="SSH sessions in parallel"),
    dcgm_level: int = typer.Option(1, "--dcgm-level", min=0, max=4, help="dcgmi diag -r LEVEL on GPU nodes (0: skip; 3 and 4 take 15+ minutes)"),
    via_slurm: bool = typer.Option(False, "--via-slurm", help="run the heavy tests (DCGM diag, NCCL, nvbandwidth, ib_write_bw) as Slurm jobs "
                                   "in a reservation on the idle nodes; busy nodes are left alone (SKIP)"),
) -> None:
    args = list(args or [])
    if args and args[0] == "parse":
        if len(args) != 3:
            raise InputError("usage: podsys check parse KIND FILE [--profile PROFILE] [--json]")
        _parse(args[1], Path(args[2]), profile, node, collective, as_json)
        return
    if len(args) > 1:
        raise InputError(f"expected one manifest, got {' '.join(args)} (to judge a saved output: podsys check parse KIND FILE)")
    if profile or node or collective:
        raise InputError("--profile/--node/--collective belong to `podsys check parse`")
    _run(Path(args[0]) if args else Path("cluster.yaml"), _split(only), _split(skip), limit, output, as_json, workers, dcgm_level,
         via_slurm)


def _finish(findings, as_json: bool, meta: dict, output_dir: Optional[Path]) -> None:
    from podsys.checks.report import exit_code, print_report, report_data, write_report

    if output_dir is not None:
        paths = write_report(findings, output_dir, meta)
    if as_json:
        data = report_data(findings, meta)
        if output_dir is not None:
            data["report"] = {k: str(v) for k, v in paths.items()}
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
    else:
        # piped into a log or CI output: wide enough that one finding stays on one or two lines
        out = console if console.is_terminal else Console(width=max(console.width, 160), highlight=False)
        print_report(findings, out)
        if output_dir is not None:
            out.print(f"report: {paths['html']} (and report.json, raw/ next to it)", markup=False, highlight=False)
    code = exit_code(findings)
    if code != EXIT_OK:
        raise typer.Exit(EXIT_FAILURE)


def _run(manifest: Path, only: list[str], skip: list[str], limit: Optional[str], output: Optional[Path], as_json: bool,
         workers: int, dcgm_level: int, via_slurm: bool = False) -> None:
    from podsys.checks.runner import default_output_dir, run_checks
    from podsys.checks.via_slurm import SlurmRun
    from podsys.cluster.load import load_cluster

    cluster = load_cluster(manifest)
    if via_slurm and not any("slurm" in n.layers for n in cluster.nodes):
        raise InputError(Problem(str(manifest), None, "layers", "--via-slurm needs the slurm layer on the nodes"))
    output_dir = output or default_output_dir(cluster)
    slurm_run = SlurmRun() if via_slurm else None
    findings = run_checks(cluster, only=only, skip=skip, limit=limit, output_dir=output_dir, workers=workers,
                          console=err_console, dcgm_level=dcgm_level, slurm_run=slurm_run)
    meta = {"cluster": cluster.name, "manifest": str(manifest), "stack": getattr(cluster.stack, "id", ""),
            "nodes": [n.name for n in cluster.nodes], "only": only, "skip": skip, "limit": limit}
    if slurm_run is not None:
        meta["via_slurm"] = slurm_run.meta()
    _finish(findings, as_json, meta, output_dir)


def _parse(kind: str, path: Path, profile_id: Optional[str], node: Optional[str], collective: Optional[str], as_json: bool) -> None:
    from podsys.checks.registry import PARSE_KINDS
    from podsys.cluster.hardware import builtin_profiles

    if kind not in PARSE_KINDS:
        raise InputError(Problem(str(path), None, "KIND", f"unknown kind {kind!r}; one of: {', '.join(PARSE_KINDS)}"))
    profiles = builtin_profiles()
    if profile_id is not None and profile_id not in profiles:
        raise InputError(Problem("--profile", None, "", f"unknown hardware profile {profile_id!r}; one of: {', '.join(profiles)}"))
    if collective is not None and collective not in ("all_reduce", "all_gather", "reduce_scatter", "alltoall"):
        raise InputError(Problem("--collective", None, "", f"unknown collective {collective!r}"))
    from podsys.checks.saved_output import file_size, read_saved_output

    try:
        if str(path) == "-":  # piped: `ssh gpu001 ibstat | podsys check parse ibstat -`
            path = Path("stdin")
            text = read_saved_output(sys.stdin.buffer, file_size(sys.stdin.buffer))
        else:
            with path.open("rb") as stream:
                text = read_saved_output(stream, file_size(stream))
    except OSError as exc:
        raise InputError(Problem(str(path), None, "", f"cannot read: {exc.strerror or exc}")) from None
    except ValueError as exc:
        raise InputError(Problem(str(path), None, kind, str(exc))) from None
    _, judge = PARSE_KINDS[kind]
    try:
        findings = judge(text, node or path.stem, profiles.get(profile_id) if profile_id else None, collective or path.name)
    except ValueError as exc:
        message = str(exc)
        line = None
        if message.startswith("line ") and ":" in message:  # "line N: ..." from the line-oriented parsers
            number, message = message[5:].split(":", 1)
            line, message = (int(number), message.strip()) if number.isdigit() else (None, str(exc))
        raise InputError(Problem(str(path), line, kind, message)) from None
    _finish(findings, as_json, {"source": str(path), "kind": kind, "profile": profile_id}, None)
