"""`podsys lab up|down|status|ssh|stop|start|fault`: a local lab cluster of container nodes."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from podsys.lab import cluster as lab
from podsys.cli.common import check_url, command_group, console, err_console, guarded

LAB_HELP = (
    "A local lab cluster: a head node and N compute nodes as systemd-nspawn containers "
    "(Debian 12, booted with systemd) on a private network, reached over real SSH.\n\n"
    "Compute nodes reach nothing but the head; the head's only way out is an apt caching "
    "proxy on the host, like an air-gapped cluster behind a site mirror. Needs root.\n\n"
    "Typical use: `podsys lab up`, then `podsys deploy lab.yaml`, `podsys lab ssh node01`, "
    "and finally `podsys lab down` in the same directory."
)

DirOption = typer.Option(
    Path("."), "--dir", "-d", help="Lab directory: lab.yaml and .podsys/lab/ live here (default: current).",
    file_okay=False,
)


class _Progress:
    """Step lines on stderr; debootstrap's hundreds of lines collapse into one live status line
    on a terminal, and into a line every few seconds elsewhere (CI logs)."""

    def __init__(self) -> None:
        self._status = None
        self._last_quiet = 0.0

    def __call__(self, message: str) -> None:
        if message.startswith("debootstrap:"):
            if err_console.is_terminal:
                if self._status is None:
                    self._status = err_console.status(message)
                    self._status.start()
                self._status.update(message)
            elif time.monotonic() - self._last_quiet > 10 or "Base system" in message:
                self._last_quiet = time.monotonic()
                err_console.print(f"· {message}", markup=False, highlight=False)
            return
        self.close()
        err_console.print(f"· {message}", markup=False, highlight=False)

    def close(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None


@guarded
def up_cmd(
    nodes: int = typer.Option(3, "--nodes", "-n", help="Number of compute nodes (a head node is always added)."),
    directory: Path = DirOption,
    mirror: str = typer.Option(
        None, "--mirror", help="Debian mirror URL (default: the host's, read from /etc/apt/sources.list{,.d})."
    ),
    vms: int = typer.Option(0, "--vms", help="Number of QEMU VMs (virtual bare metal, PXE-installed, "
                            "each with an IPMI BMC); they stay powered off."),
    vm_disk_size: str = typer.Option("8G", "--vm-disk-size", help="Each VM's blank disk (qemu-img size: 8G, 20480M)."),
    vm_nice: int = typer.Option(0, "--vm-nice", help="Scheduling priority of the VMs' emulators (nice, -20 to 19), "
                                "set at each power-on. An emulated VM needs many host instructions for each of "
                                "its own, so on a busy host a negative value (e.g. -10) keeps "
                                "its work from crawling."),
) -> None:
    """Build and boot the lab, write lab.yaml (a manifest for it) and print the next command.

    The Debian 12 root is debootstrapped once and cached in /var/cache/podsys/lab
    (PODSYS_LAB_CACHE overrides); each node boots a copy-on-write clone of it.

    With --vms N the lab also gets N QEMU machines (software emulation; the first BIOS, the
    second UEFI, alternating) with blank disks on the provision network, in lab.yaml's `vms`
    group, and one IPMI-over-LAN BMC each (ipmi_sim) in lab.yaml's `bmc` section. Nothing
    starts them but their BMC: e.g. ipmitool -I lanplus -C 3 ... chassis power on."""
    if mirror is not None:
        check_url("--mirror", mirror, "http://deb.debian.org/debian")
    directory.mkdir(parents=True, exist_ok=True)
    progress = _Progress()
    try:
        state = lab.up(directory, nodes=nodes, mirror=mirror, progress=progress, vms=vms,
                       vm_disk_size=vm_disk_size, vm_nice=vm_nice)
    finally:
        progress.close()
    info = lab.status(directory)
    _print_status(info)
    manifest = Path(state["manifest"])
    rel = os.path.relpath(manifest) if manifest.is_relative_to(Path.cwd()) else str(manifest)
    console.print(f"\nLab is up. Next: [bold]podsys deploy {rel}[/bold]   (shell: podsys lab ssh head)")


@guarded
def down_cmd(
    directory: Path = DirOption,
    purge: bool = typer.Option(False, "--purge", help="Also delete the lab key, apt cache, logs and lab.yaml."),
) -> None:
    """Stop the containers and the apt proxy, delete the namespaces, bridge, veths and node roots.

    Removes exactly what `podsys lab up` recorded (plus leftovers with the lab's name prefix);
    safe to run twice and after a crash. Keeps lab.yaml, the lab SSH key and the apt cache
    for the next `up` unless --purge."""
    removed = lab.down(directory, progress=_Progress(), purge=purge)
    console.print(f"removed {len(removed)} object(s)" if removed else "no lab running here; nothing to do")


@guarded
def status_cmd(
    directory: Path = DirOption,
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Show each node's container and sshd state, each VM's power and BMC, and the apt proxy's.
    Exit 1 if degraded (a VM that is off is not degraded: off is where VMs start)."""
    info = lab.status(directory)
    if as_json:
        console.print_json(json.dumps(info))
    else:
        _print_status(info)
    if info["state"] == "degraded":
        raise typer.Exit(1)


@guarded
def ssh_cmd(
    node: str = typer.Argument(..., help="`head`, a compute node's hostname (e.g. node01), or a VM a deploy installed (vm01)."),
    command: list[str] = typer.Argument(None, help="Command to run; a login shell when omitted."),
    directory: Path = DirOption,
) -> None:
    """Open a shell on a lab node, or run COMMAND there (compute nodes via the head)."""
    command = command or []
    argv = lab.ssh_argv(directory, node, command, tty=not command and sys.stdin.isatty())
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvp(argv[0], argv)


@guarded
def stop_cmd(node: str = typer.Argument(..., help="Node hostname."), directory: Path = DirOption) -> None:
    """Power one node off (its disk and network stay), e.g. to see how a deploy handles it."""
    lab.ssh_argv(directory, node, vms=False)  # validates the name: containers only (a VM's power is its BMC's)
    lab.stop_node(directory, node)
    console.print(f"{node} stopped")


@guarded
def start_cmd(node: str = typer.Argument(..., help="Node hostname."), directory: Path = DirOption) -> None:
    """Boot a stopped node again and wait for its sshd."""
    lab.ssh_argv(directory, node)
    lab.start_node(directory, node, progress=_Progress())
    console.print(f"{node} started")


@guarded
def fault_cmd(
    node: str = typer.Argument(..., help="Compute node hostname."),
    kind: Optional[str] = typer.Argument(None, help="xid79, gpu-missing, ib-port-down, ib-rate-degraded, nvlink-inactive, "
                                         "fm-stopped, peermem-missing, row-remap-pending; none: a healthy GPU node"),
    clear: bool = typer.Option(False, "--clear", help="remove the shims"),
    directory: Path = DirOption,
) -> None:
    """Make NODE look like a GPU node (replayed nvidia-smi, dcgmi, ibstat, dmesg, lsmod) with one fault."""
    from podsys.lab.fault import apply

    console.print(apply(directory, node, kind, clear), markup=False, highlight=False)


def _print_status(info: dict) -> None:
    if info["state"] == "down":
        console.print(f"no lab running in {info['directory']}")
        return
    table = Table(title=f"lab {info['prefix']} in {info['directory']}: {info['state']}")
    for col in ("node", "address", "ssh via", "mac", "container", "sshd"):
        table.add_column(col, no_wrap=True)
    for n in info["nodes"]:
        via = n["ssh_address"] if n["role"] == "head" else "head"
        table.add_row(n["name"], n["address"], via, n["mac"],
                      "running" if n["running"] else "[red]stopped[/red]",
                      "ok" if n["sshd"] else "[red]no[/red]")
    console.print(table)
    proxy = info["proxy"]
    console.print(f"apt proxy {proxy['url']} -> {proxy['upstream']}: "
                  f"{'running' if proxy['running'] else '[red]stopped[/red]'}")
    if info.get("vms"):
        _print_vms(info)


def _print_vms(info: dict) -> None:
    table = Table(title="VMs (powered through their BMCs)", title_justify="left")
    for col in ("vm", "address", "mac", "firmware", "power", "bmc"):
        table.add_column(col, no_wrap=True)
    for vm in info["vms"]:
        table.add_row(vm["name"], vm["address"], vm["mac"], vm["firmware"], vm["power"],
                      f"{vm['bmc_address']}:{vm['bmc_port']}")
    console.print(table)
    bmc = info["bmc"]
    console.print(f"BMCs (ipmi_sim, IPMI lanplus, cipher suite {bmc['cipher_suite']}, user {bmc['user']}, "
                  f"password file {bmc['password_file']}): "
                  f"{'running' if bmc['running'] else '[red]stopped[/red]'}", markup=True, highlight=False)


def register(app: typer.Typer) -> None:
    lab_group = command_group(app, "lab", LAB_HELP)
    lab_group.command("up")(up_cmd)
    lab_group.command("down")(down_cmd)
    lab_group.command("status")(status_cmd)
    lab_group.command("ssh", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(ssh_cmd)
    lab_group.command("stop")(stop_cmd)
    lab_group.command("start")(start_cmd)
    lab_group.command("fault")(fault_cmd)
