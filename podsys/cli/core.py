"""init, validate, render and compat: the manifest/matrix verbs."""

from __future__ import annotations

import json
import sys
from datetime import date
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from podsys.cli.common import command_group, console, err_console, guarded
from podsys.errors import InputError, Problem

MANIFEST_ARG = typer.Argument(Path("cluster.yaml"), help="cluster manifest (default: ./cluster.yaml)")


def register(app: typer.Typer) -> None:
    app.command("init")(init)
    app.command("validate")(validate)
    app.command("render")(render)
    compat = command_group(app, "compat",
                           "Query the compatibility matrix: which stacks fit a GPU/OS, and why a combination is refused.")
    compat.command("list")(compat_list)
    compat.command("show")(compat_show)
    compat.command("check")(compat_check)
    compat.command("packages")(compat_packages)


@guarded
def init(
    path: Path = typer.Argument(Path("cluster.yaml"), help="where to write the starter manifest"),
    name: str = typer.Option("pod01", help="cluster name"),
    head_interface: Optional[str] = typer.Option(None, help="head NIC on the provision network (default: detected)"),
    force: bool = typer.Option(False, "--force", help="overwrite existing files"),
) -> None:
    """Write a commented starter manifest and a sample MAC list.

    The head's provision NIC and address are detected from this machine where possible.
    Edit the result, then run `podsys validate`."""
    from podsys.cluster.starter import detect_nics, starter_values, write_starter

    written = write_starter(path, starter_values(name, head_interface, detect_nics()), force)
    for target in written:
        console.print(f"wrote {target}")
    console.print(f"next: edit {written[0].name} and {written[1].name}, then run: podsys validate {path}")


def _group_summary(cluster) -> list[dict]:
    from podsys.cluster.hostlists import collapse_hosts

    rows = []
    for group in cluster.manifest.node_groups:
        nodes = cluster.group_nodes(group.name)
        rows.append(
            {
                "group": group.name,
                "hosts": collapse_hosts([n.name for n in nodes]) if nodes else "",
                "count": len(nodes),
                "hardware": group.hardware,
                "first_ip": nodes[0].provision_ip if nodes else None,
                "last_ip": nodes[-1].provision_ip if nodes else None,
            }
        )
    return rows


@guarded
def validate(
    manifest: Path = MANIFEST_ARG,
    as_json: bool = typer.Option(False, "--json", help="machine-readable result on stdout"),
) -> None:
    """Check a manifest: schema (unknown keys, types), then semantics (hostlists, duplicate
    names/MACs/IPs, addresses outside networks, groups that do not fit, missing MACs, unknown
    profiles, SSH keys, Slurm partitions, provisioning) and the compatibility matrix, all in
    one pass. Every problem is printed as FILE:LINE: FIELD: message. Writes nothing.
    Exit 0 valid, 2 invalid."""
    from podsys.cluster.load import load_cluster

    if as_json:
        try:
            cluster = load_cluster(manifest)
        except InputError as exc:
            print(json.dumps({"valid": False, "problems": [p.__dict__ for p in exc.problems]}, indent=2))
            raise typer.Exit(2)
        print(json.dumps({"valid": True, "cluster": cluster.name, "nodes": len(cluster.nodes), "stack": cluster.stack.id,
                          "stack_reason": cluster.stack_reason, "groups": _group_summary(cluster)}, indent=2))
        return
    cluster = load_cluster(manifest)
    table = Table(title=f"cluster {cluster.name}: {len(cluster.nodes)} nodes", title_justify="left")
    for col in ("group", "hosts", "count", "hardware", "addresses"):
        table.add_column(col)
    for row in _group_summary(cluster):
        table.add_row(row["group"], row["hosts"], str(row["count"]), row["hardware"], f"{row['first_ip']} - {row['last_ip']}")
    console.print(table)
    console.print(f"stack: {cluster.stack.id} ({cluster.stack_reason})")
    console.print(f"[green]{manifest} is valid[/green]")


@guarded
def render(
    manifest: Path = MANIFEST_ARG,
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="build directory (default: .podsys/build beside the manifest)"),
    diff: bool = typer.Option(False, "--diff", help="show a unified diff of what this render changes"),
    check: bool = typer.Option(False, "--check", help="change nothing; exit 1 if a render would change files"),
) -> None:
    """Write the build directory: the Ansible inventory and the variables the roles lay out
    (nodes, Slurm gres and partitions, Prometheus targets), and the head's boot services.

    Rendering is deterministic: the same manifest gives byte-identical files, and only files
    whose content changed are rewritten. Addresses are recorded in <manifest>.addresses.yaml
    beside the manifest (commit it: it keeps addresses stable when groups grow)."""
    from podsys.cluster.load import load_cluster
    from podsys.render.build import diff_render, render_cluster

    cluster = load_cluster(manifest)
    build_dir = output or cluster.default_build_dir
    if diff or check:
        text, result = diff_render(cluster, build_dir)
        if diff:
            # Written as is: a console would wrap long lines at 80 columns when piped.
            sys.stdout.write(text)
            sys.stdout.flush()
        if check:
            console.print(f"{len(result.added)} added, {len(result.changed)} changed, {len(result.removed)} removed")
            raise typer.Exit(1 if result.touched else 0)
    result = render_cluster(cluster, build_dir)
    console.print(
        f"rendered {build_dir}: {len(result.added)} added, {len(result.changed)} changed, "
        f"{len(result.removed)} removed, {result.unchanged} unchanged"
    )


def _matrix():
    from podsys.cluster.matrix import load_matrix

    return load_matrix()


def _profiles_for(gpu: Optional[str], hardware: Optional[str]):
    from podsys.cluster.hardware import builtin_profiles

    profiles = builtin_profiles()
    if hardware:
        if hardware not in profiles:
            raise InputError(Problem("", None, "--hardware", f"unknown hardware profile '{hardware}' (known: {', '.join(profiles)})"))
        return [profiles[hardware]]
    if gpu:
        matches = [p for p in profiles.values() if p.gpu and p.gpu.model.lower() == gpu.lower()]
        if not matches:
            models = sorted({p.gpu.model for p in profiles.values() if p.gpu})
            raise InputError(Problem("", None, "--gpu", f"unknown GPU '{gpu}' (known: {', '.join(models)})"))
        return matches[:1]
    return []


def _os_problems(os_name: str) -> list[Problem]:
    from podsys.cluster.schema import SUPPORTED_OS_KEYS

    if os_name in SUPPORTED_OS_KEYS:
        return []
    return [Problem("", None, "--os", f"unknown OS '{os_name}' (known: {', '.join(SUPPORTED_OS_KEYS)})")]


def _layer_list(layers: str) -> tuple[list[str], list[Problem]]:
    """--layers a,b,c -> the list, and a problem per unknown layer."""
    from podsys.cluster.schema import LAYERS

    names = [name.strip() for name in layers.split(",") if name.strip()]
    problems = [Problem("", None, "--layers", f"unknown layer '{name}' (known: {', '.join(LAYERS)})")
                for name in names if name not in LAYERS]
    return names, problems


def _version_problems(option: str, value: Optional[str], parts: int) -> list[Problem]:
    """A version given on the command line: dot-separated numbers, `parts` of them at least
    (a driver is 580.65.06, a CUDA release 12.8)."""
    import re

    if value is None or re.fullmatch(r"\d+(\.\d+){%d,}" % (parts - 1), value):
        return []
    example = "580.65.06" if parts >= 2 and option == "--driver" else "12.8"
    return [Problem("", None, option, f"'{value[:40]}' is not a version (e.g. {example})")]


LAYERS_OPT = typer.Option("base,gpu,infiniband,slurm,monitoring", help="comma-separated layers")


@guarded
def compat_list(
    os_name: Optional[str] = typer.Option(None, "--os", help="only stacks valid for this OS, e.g. ubuntu-22.04"),
    gpu: Optional[str] = typer.Option(None, help="only stacks valid for this GPU model, e.g. H200"),
    layers: str = LAYERS_OPT,
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """List the pinned stacks, newest first, and whether each fits the given OS/GPU."""
    from podsys.cluster.matrix import check_combination

    matrix = _matrix()
    profiles = _profiles_for(gpu, None)
    layer_list, problems = _layer_list(layers)
    if os_name:
        problems += _os_problems(os_name)
    if problems:
        raise InputError(problems)
    rows = []
    for stack in matrix.newest_first():
        violations = []
        if os_name:
            violations = check_combination(matrix, stack, os_name, profiles, layer_list)
        elif profiles:
            violations = [v for v in check_combination(matrix, stack, stack.os[0], profiles, layer_list) if v.rule != "stack_supports_os" and v.rule != "ofed_supports_os"]
        eol = stack.past_end_of_life(date.today())
        rows.append({"id": stack.id, "branch": stack.branch, "driver": stack.driver, "cuda": stack.cuda, "nccl": stack.nccl,
                     "os": list(stack.os), "end_of_life": stack.end_of_life.isoformat() if stack.end_of_life else None,
                     "eol": eol, "valid": not violations, "refused_by": [str(v) for v in violations]})
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title="podsys compatibility matrix (newest first)", title_justify="left")
    for col in ("stack", "branch", "driver", "CUDA", "NCCL", "OS", "support", "fits"):
        table.add_column(col)
    for row in rows:
        fits = "[green]yes[/green]" if row["valid"] else f"[red]no[/red]: {row['refused_by'][0]}"
        # Past end of life: still selectable by name, never picked by `stack: auto`.
        support = f"[red]EOL {row['end_of_life']}[/red] (not auto)" if row["eol"] else f"until {row['end_of_life']}"
        table.add_row(row["id"], row["branch"], row["driver"], row["cuda"], row["nccl"], " ".join(row["os"]), support, fits)
    console.print(table)


@guarded
def compat_show(stack_id: str = typer.Argument(..., help="stack id, e.g. r580-cuda13.0"),
                as_json: bool = typer.Option(False, "--json")) -> None:
    """Every pinned version of one stack."""
    matrix = _matrix()
    if stack_id not in matrix.stacks:
        import difflib

        close = difflib.get_close_matches(stack_id, list(matrix.stacks), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else f" (known: {', '.join(matrix.stacks)})"
        raise InputError(Problem("", None, "STACK", f"unknown stack '{stack_id}'{hint}"))
    data = matrix.stack(stack_id).as_vars()
    if as_json:
        print(json.dumps(data, indent=2))
        return
    table = Table(title=f"stack {stack_id}", show_header=False, title_justify="left")
    for key, value in data.items():
        if isinstance(value, dict):
            value = " ".join(f"{k}={v}" for k, v in value.items())
        elif isinstance(value, list):
            value = ", ".join(value)
        table.add_row(key, str(value))
    console.print(table)


@guarded
def compat_check(
    os_name: str = typer.Option(..., "--os", help="e.g. ubuntu-22.04, rocky-9, debian-12"),
    stack_id: str = typer.Option(..., "--stack", help="stack id from `podsys compat list`"),
    gpu: Optional[str] = typer.Option(None, help="GPU model: A100, H100, H200, B200, L40S"),
    hardware: Optional[str] = typer.Option(None, help="hardware profile id instead of --gpu"),
    driver: Optional[str] = typer.Option(None, help="check this driver instead of the stack's"),
    cuda: Optional[str] = typer.Option(None, help="check this CUDA major.minor instead of the stack's"),
    layers: str = LAYERS_OPT,
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Is this combination allowed? Exit 0 if so; exit 1 listing every violated rule with its
    reason and source."""
    from podsys.cluster.matrix import check_combination

    matrix = _matrix()
    # Every bad option in one run, not the first one only.
    layer_list, problems = _layer_list(layers)
    problems = (_os_problems(os_name) + problems + _version_problems("--driver", driver, 2)
                + _version_problems("--cuda", cuda, 2))
    if stack_id not in matrix.stacks:
        problems.append(Problem("", None, "--stack", f"unknown stack '{stack_id}' (known: {', '.join(matrix.stacks)})"))
    try:
        profiles = _profiles_for(gpu, hardware)
    except InputError as exc:
        problems += exc.problems
    if problems:
        raise InputError(problems)
    stack = matrix.stack(stack_id)
    updates = {}
    if driver:
        updates["driver"] = driver
        if stack.fabric_manager:
            updates["fabric_manager"] = driver
    if cuda:
        updates["cuda"] = cuda
    if updates:
        stack = stack.model_copy(update=updates)
    violations = check_combination(matrix, stack, os_name, profiles, layer_list)
    if as_json:
        print(json.dumps({"allowed": not violations, "violations": [v.__dict__ for v in violations]}, indent=2))
    elif violations:
        for v in violations:
            err_console.print(f"refused: {v}", markup=False)
    else:
        what = gpu or hardware or "no GPU"
        console.print(f"[green]allowed[/green]: {stack_id} (driver {stack.driver}, CUDA {stack.cuda}) with {what} on {os_name}")
    if violations:
        raise typer.Exit(1)


@guarded
def compat_packages(
    stack_id: str = typer.Argument(..., help="stack id, e.g. r580-cuda13.0"),
    os_name: str = typer.Option(..., "--os", help="e.g. ubuntu-22.04, rocky-9, debian-12"),
    hardware: str = typer.Option("hgx-h100-8gpu", help="hardware profile id (`podsys hardware` profiles)"),
    infiniband: str = typer.Option("matrix", help="matrix (the stack's OFED) or inbox"),
    release: Optional[str] = typer.Option(None, help="full OS release (9.6, 12.5): picks the OFED directory"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """The exact plan a node gets, in install order: repositories (URL, suite, key, fingerprint),
    module streams, packages with pinned versions, apt pins, kernel modules and services. The
    roles run the same plan (podsys/cluster/stack_packages.py)."""
    from podsys.cluster.stack_packages import node_plan

    matrix = _matrix()
    problems = _os_problems(os_name)
    if stack_id not in matrix.stacks:
        problems.append(Problem("", None, "STACK", f"unknown stack '{stack_id}' (known: {', '.join(matrix.stacks)})"))
    if infiniband not in ("matrix", "inbox"):
        problems.append(Problem("", None, "--infiniband", f"'{infiniband}' is not matrix or inbox"))
    if problems:
        raise InputError(problems)
    (profile,) = _profiles_for(None, hardware)
    options = {"layers": ["gpu", "infiniband", "container"], "infiniband": {"stack": infiniband}, "os_release": release}
    plan = node_plan(matrix.stack(stack_id), os_name, profile, options, matrix)
    if as_json:
        print(json.dumps({**plan.as_dict(), "hardware": hardware}, indent=2))
        return
    console.print(f"[bold]{stack_id}[/bold] on {os_name} ({plan.family}), hardware {hardware}, infiniband {infiniband}")
    repos = Table(title="1. repositories", title_justify="left")
    for col in ("name", "URL", "suite", "key", "fingerprint", "for"):
        repos.add_column(col)
    for r in plan.repositories:
        checks = "" if plan.family == "apt" else f" (gpgcheck={int(r.gpgcheck)} repo_gpgcheck={int(r.repo_gpgcheck)})"
        repos.add_row(r.name, r.url, r.suite or "-", r.key_url + checks, r.fingerprint or "not recorded", ", ".join(r.for_components))
    console.print(repos)
    if plan.module_streams:
        console.print("2. dnf module streams: " + ", ".join(plan.module_streams))
    packages = Table(title="3. packages, in install order", title_justify="left")
    for col in ("#", "component", "package", "version", "given to the package manager", "from"):
        packages.add_column(col)
    for i, p in enumerate(plan.packages, 1):
        packages.add_row(str(i), p.component, p.name, p.version or "-", p.spec, p.origin)
    console.print(packages)
    for pin in plan.pins:
        console.print(f"apt pin (priority 1001) {pin['version']}: {pin['packages']}", markup=False)
    modules = Table(title="4. kernel modules, in load order", title_justify="left")
    for col in ("module", "when", "why"):
        modules.add_column(col)
    for m in plan.kernel_modules:
        modules.add_row(m["name"], m["when"], m["why"])
    console.print(modules)
    for svc in plan.services:
        console.print(f"service {svc['name']}: {svc['why']}", markup=False)
    for note in plan.notes:
        console.print(f"note: {note}", markup=False)
