"""Bare-metal provisioning verbs: status, reinstall, discover, power, provision media add.

They run on the head node, where the boot tree and the install state live (paths are the
provision role's defaults; override them with --boot-root / --state-dir)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional

import typer
from rich.live import Live
from rich.table import Table

from podsys.cli.common import check_url, command_group, console, err_console, guarded
from podsys.errors import InputError, PodsysError, Problem
from podsys.layout import HEAD_PATHS

MANIFEST_ARG = typer.Argument(Path("cluster.yaml"), help="cluster manifest (default: ./cluster.yaml)")
MANIFEST_OPT = typer.Option(Path("cluster.yaml"), "--manifest", "-m", help="cluster manifest (default: ./cluster.yaml)")
STATE_DIR_OPT = typer.Option(Path(HEAD_PATHS.state_dir), "--state-dir", help="install/boot state on the head")
BOOT_ROOT_OPT = typer.Option(Path(HEAD_PATHS.boot_root), "--boot-root", help="boot tree nginx serves on the head")
JSON_OPT = typer.Option(False, "--json", help="machine-readable output on stdout")


def register(app: typer.Typer) -> None:
    app.command("status")(status)
    app.command("reinstall")(reinstall)
    app.command("discover")(discover)
    app.command("power")(power)
    provision = command_group(app, "provision", "Head-node boot services: installer media for PXE installs.")
    media = command_group(provision, "media", "Installer kernels, initrds and images in the boot tree.")
    media.command("add")(media_add)


def _store(cluster, state_dir: Path, boot_root: Optional[Path]):
    from podsys.provision.render import status_nodes
    from podsys.provision.state import NodeInfo, StateStore

    nodes = {name: NodeInfo(name, n["ip"], n["mac"]) for name, n in status_nodes(cluster).items() if n["pxe"]}
    return StateStore(state_dir, boot_root, nodes, cluster.manifest.provisioning.default_boot_state)


def _select(cluster, hostlist: str, flag: str = "HOSTLIST") -> list[str]:
    from podsys.cluster.selection import select_nodes

    return [n.name for n in select_nodes(cluster, hostlist, flag)]


def _status_table(cluster_name: str, rows: list[dict], missing_state: Optional[Path] = None) -> Table:
    from podsys.provision.status import summary

    counts = ", ".join(f"{k} {v}" for k, v in sorted(summary(rows).items()))
    if missing_state is not None:
        counts = f"no install state yet: {missing_state} does not exist"
    table = Table(title=f"install status: {cluster_name} ({counts})", title_justify="left")
    for col in ("node", "boot", "state", "stage", "started", "finished", "duration", "message"):
        table.add_column(col, overflow="fold")
    style = {"installed": "green", "failed": "red", "installing": "yellow"}
    for r in rows:
        table.add_row(r["node"], r["boot"], f"[{style.get(r['state'], 'default')}]{r['state']}[/]", r["stage"],
                      r["started"], r["finished"], r["duration"], r["message"])
    return table


def _fetch_rows(url: str) -> list[dict]:
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/api/v1/status", timeout=10) as resp:
            return json.loads(resp.read())["nodes"]
    except (urllib.error.URLError, OSError, ValueError, KeyError) as exc:
        raise PodsysError(f"cannot read the status service at {url}: {getattr(exc, 'reason', exc)}") from None


@guarded
def status(
    manifest: Path = MANIFEST_ARG,
    watch: bool = typer.Option(False, "--watch", "-w", help="redraw the table every --interval seconds"),
    interval: float = typer.Option(5.0, "--interval", min=0.5, help="seconds between redraws with --watch"),
    serve: bool = typer.Option(False, "--serve", help="run the status service: callbacks + a self-refreshing HTML page"),
    listen: str = typer.Option("0.0.0.0", "--listen", help="address --serve binds"),
    port: Optional[int] = typer.Option(None, "--port", help="port --serve binds (default: provisioning.status_port)"),
    url: Optional[str] = typer.Option(None, "--url", help="read a running status service instead of --state-dir, "
                                                          "e.g. http://10.0.0.1:8081"),
    limit: Optional[str] = typer.Option(None, "--limit", help="only these nodes, a hostlist such as gpu[001-004]"),
    state_dir: Path = STATE_DIR_OPT,
    boot_root: Path = BOOT_ROOT_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Per-node install status: boot state (install/local), install state, stage, start,
    finish, duration and the installer's last message.

    The installers call back to the head at start, at each stage and at finish; a finished
    node is switched to boot from its disk. `--serve` runs that callback receiver with a
    read-only HTML page (the provision role runs the same service on the head)."""
    from podsys.cluster.load import load_cluster
    from podsys.provision.status import StatusServer, status_rows

    if url is not None:
        check_url("--url", url, "http://10.0.0.1:8081")
    cluster = load_cluster(manifest)
    shown = set(_select(cluster, limit, "--limit")) if limit is not None else None
    store = _store(cluster, state_dir, boot_root if boot_root.is_dir() else None)
    if not serve and not watch and url is None and not store.path.exists():
        # Without the head's state file every node would read "pending": say there is none.
        if as_json:
            print(json.dumps({"cluster": cluster.name, "state_file": str(store.path), "state": "none", "nodes": []},
                             indent=2))
        else:
            console.print(f"no install state for {cluster.name}: {store.path} does not exist (no installer has "
                          "called back yet, or this is not the head: use --state-dir, or --url http://HEAD:PORT)",
                          markup=False, highlight=False)
        return
    if serve:
        bind_port = port or cluster.manifest.provisioning.status_port
        try:
            server = StatusServer((listen, bind_port), store, cluster.name)
        except OSError as exc:
            raise PodsysError(f"cannot listen on {listen}:{bind_port}: {exc.strerror}") from None
        console.print(f"status service for {cluster.name}: http://{listen}:{bind_port}/ (Ctrl-C stops)")
        try:
            server.serve_forever()
        finally:
            server.server_close()
        return

    def rows() -> list[dict]:
        every = _fetch_rows(url) if url else status_rows(store)
        return every if shown is None else [r for r in every if r["node"] in shown]

    def table() -> Table:
        current = rows()
        return _status_table(cluster.name, current, None if url or store.path.exists() else store.path)

    if as_json:
        print(json.dumps({"cluster": cluster.name, "nodes": rows()}, indent=2))
        return
    if not watch:
        console.print(_status_table(cluster.name, rows()))
        return
    try:
        with Live(table(), console=console, refresh_per_second=1) as live:
            while True:
                time.sleep(interval)
                live.update(table())
    except KeyboardInterrupt:
        pass  # Ctrl-C is how a watch ends: leave the last table on screen, exit 0


@guarded
def reinstall(
    hostlist: str = typer.Argument(..., help="nodes to reinstall, e.g. gpu[001-004],gpu010"),
    manifest: Path = MANIFEST_OPT,
    state_dir: Path = STATE_DIR_OPT,
    boot_root: Path = BOOT_ROOT_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Switch nodes back to boot state `install`: their next PXE boot wipes the manifest's
    install disk and installs the OS again. Nothing is rebooted here: `podsys deploy` then
    PXE-boots and re-images them (`--batch N` for a rolling re-image, N at a time, each batch
    drained in Slurm first), or power them yourself with `podsys power pxe HOSTLIST`.
    Run where the head's state directory is missing (a workstation), the head does the switch
    over SSH."""
    from podsys.cluster.load import load_cluster
    from podsys.provision.state import StateError

    cluster = load_cluster(manifest)
    names = _select(cluster, hostlist)
    not_pxe = [n for n in names if not cluster.node(n).pxe]
    if not_pxe:
        raise InputError(Problem(str(cluster.manifest_path), None, "HOSTLIST",
                                 f"these nodes do not PXE-install (pxe: false): {', '.join(not_pxe)}"))
    if state_dir == Path(HEAD_PATHS.state_dir) and not state_dir.is_dir():
        # The default path and no such directory: this is not the head (the provision role creates it there).
        from podsys.deploy.install_backends import set_install_on_head

        said = set_install_on_head(cluster, names)  # the state tool's "changed: N"
        if as_json:
            print(json.dumps({"boot": "install", "nodes": names, "on_head": said}))
        else:
            console.print(f"{len(names)} node(s) set to install on next PXE boot (on the head: {said}); "
                          "`podsys deploy` re-images them", markup=False, highlight=False)
        return
    try:
        changed = _store(cluster, state_dir, boot_root).set_boot_state(names, "install")
    except StateError as exc:
        raise PodsysError(str(exc)) from None
    if as_json:
        print(json.dumps({"boot": "install", "nodes": names, "changed": changed}))
        return
    console.print(f"{len(names)} node(s) set to install on next PXE boot ({len(changed)} changed)")


@guarded
def discover(
    manifest: Path = MANIFEST_ARG,
    leases: Path = typer.Option(Path(HEAD_PATHS.leases_file), "--leases", help="dnsmasq lease file"),
    assign_group: Optional[str] = typer.Option(None, "--assign", help="give the MACs to this group's nodes that have "
                                                                      "none and append them to its macs_file"),
    as_json: bool = JSON_OPT,
) -> None:
    """List MACs of unknown machines that asked for an address in the discovery pool
    (provisioning.discovery), oldest first. They get no boot file until they are in the
    manifest. `--assign GROUP` writes them to that group's MAC csv in hostlist order;
    review with `podsys validate`, then `podsys render` and re-run the provision role."""
    from podsys.provision import discover as disc
    from podsys.cluster.parse import parse_manifest
    from podsys.cluster.yaml_source import load_yaml_file

    path = manifest.absolute()
    data, smap = load_yaml_file(path)
    m = parse_manifest(data, smap)
    if not m.provisioning.discovery.enabled:
        raise InputError(Problem(str(path), None, "provisioning.discovery.enabled",
                                 "discovery is off; enable it with a range_start/range_end pool first"))
    try:
        text = leases.read_text()
    except OSError as exc:
        raise PodsysError(f"{leases}: cannot read the dnsmasq lease file ({exc.strerror})") from None
    found = disc.discovered(m, path.parent, disc.parse_leases(text))
    assigned: list[tuple[str, str]] = []
    if assign_group:
        group = next((g for g in m.node_groups if g.name == assign_group), None)
        if group is None:
            raise InputError(Problem(str(path), None, "--assign",
                                     f"no node group '{assign_group}' (groups: {', '.join(g.name for g in m.node_groups)})"))
        if not group.macs_file:
            raise InputError(Problem(str(path), None, f"node_groups.{assign_group}.macs_file",
                                     "the group has no macs_file to append to"))
        assigned = disc.assign(disc.hosts_without_mac(m, path.parent, assign_group), found)
        if assigned:
            disc.append_macs(path.parent / group.macs_file, assigned)
    if as_json:
        print(json.dumps({"discovered": [{"mac": lease.mac, "ip": lease.ip, "hostname": lease.hostname}
                                         for lease in found],
                          "assigned": [{"node": h, "mac": mac} for h, mac in assigned]}, indent=2))
        return
    table = Table(title=f"discovered MACs ({len(found)})", title_justify="left")
    for col in ("mac", "ip", "dhcp hostname", "assigned to"):
        table.add_column(col)
    given = {mac: host for host, mac in assigned}
    for lease in found:
        table.add_row(lease.mac, lease.ip, lease.hostname, given.get(lease.mac, ""))
    console.print(table)
    if assign_group:
        console.print(f"appended {len(assigned)} line(s) to {group.macs_file}")
        left = len(found) - len(assigned)
        if left > 0:
            err_console.print(f"warning: {left} MAC(s) left over: group {assign_group} has no node without a MAC")


@guarded
def power(
    action: str = typer.Argument(..., help="on | off | cycle | pxe (next boot from the network, then cycle) | status"),
    hostlist: str = typer.Argument(..., help="nodes, e.g. gpu[001-032]"),
    manifest: Path = MANIFEST_OPT,
    verify_tls: bool = typer.Option(False, "--verify-tls", help="Redfish: verify the BMC's TLS certificate"),
    parallel: int = typer.Option(32, "--parallel", min=1, help="BMCs talked to at once"),
    as_json: bool = JSON_OPT,
) -> None:
    """Power nodes through their BMCs (manifest `bmc:` protocol ipmi or redfish), all at once,
    one result per node. The BMC password comes from bmc.password_file and is never shown.
    Exit 1 if any node failed."""
    from podsys.cluster.load import load_cluster
    from podsys.provision.power import ACTIONS, BMCTarget, backend_for, run_power

    if action not in ACTIONS:
        raise InputError(Problem("", None, "ACTION", f"unknown action '{action}' (expected {' | '.join(ACTIONS)})"))
    cluster = load_cluster(manifest)
    bmc = cluster.manifest.bmc
    if bmc is None:
        raise InputError(Problem(str(cluster.manifest_path), None, "bmc", "no bmc credentials in the manifest"))
    names = _select(cluster, hostlist)
    no_bmc = [n for n in names if not cluster.node(n).bmc_ip]
    if no_bmc:
        raise InputError(Problem(str(cluster.manifest_path), None, "networks.bmc",
                                 f"no BMC address for: {', '.join(no_bmc[:10])}"))
    backend, password = backend_for(cluster, verify_tls=verify_tls)
    targets = [BMCTarget(n, cluster.node(n).bmc_ip or "") for n in names]
    with console.status(f"power {action} on {len(targets)} node(s)"):
        results = run_power(targets, action, backend, secret=password, parallel=parallel)
    if as_json:
        print(json.dumps([{"node": r.node, "ok": r.ok, "message": r.message} for r in results], indent=2))
    else:
        table = Table(title=f"power {action}", title_justify="left")
        for col in ("node", "result", "message"):
            table.add_column(col)
        for r in results:
            table.add_row(r.node, "[green]ok[/]" if r.ok else "[red]FAILED[/]", r.message)
        console.print(table)
    failed = [r.node for r in results if not r.ok]
    if failed:
        raise PodsysError(f"power {action} failed on {len(failed)} of {len(results)} node(s)")


@guarded
def media_add(
    source: Path = typer.Argument(..., help="Ubuntu live-server ISO, Rocky ISO, or Debian netboot directory/tarball "
                                            "(e.g. /usr/lib/debian-installer/images/12/amd64/text)"),
    manifest: Path = MANIFEST_OPT,
    os_key: Optional[str] = typer.Option(None, "--os", help="media for this OS, e.g. ubuntu-24.04 (default: the manifest's)"),
    boot_root: Path = BOOT_ROOT_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Put an installer's kernel and initrd (and the squashfs/ISO it fetches) into the boot
    tree under media/<os>/, with sha256 checksums in SHA256SUMS and media.json."""
    from podsys.provision.media import MediaError, add_media

    if os_key is None:
        if not manifest.exists():
            raise InputError(Problem(str(manifest), None, "--os", "no manifest here: name the OS with --os, e.g. debian-12"))
        from podsys.cluster.load import load_cluster

        os_key = load_cluster(manifest).manifest.os.key
    try:
        with console.status(f"adding {source} to {boot_root}/media/{os_key}"):
            record = add_media(source, os_key, boot_root)
    except MediaError as exc:
        raise InputError(Problem(str(source), None, "ISO_OR_NETBOOT", str(exc).removeprefix(f"{source}: "))) from None
    except OSError as exc:
        raise PodsysError(f"cannot write {boot_root}/media/{os_key}: {exc.strerror}") from None
    if as_json:
        print(json.dumps(record, indent=2))
        return
    for name, digest in record["sha256"].items():
        console.print(f"{digest}  media/{os_key}/{name}")
