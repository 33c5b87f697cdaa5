"""`podsys lab fault NODE KIND`: make a lab node look like a GPU node with one fault.

Shims for nvidia-smi, dcgmi, ibstat, dmesg, lsmod (and `systemctl is-active
nvidia-fabricmanager`) go into /usr/local/sbin, ahead of the real tools on root's PATH; they
replay the outputs in podsys/data/captures/<profile>/ (formats and sources in its README), with
the fault applied to the healthy ones. Without KIND the node is a healthy GPU node; `--clear`
removes every shim. Pure functions build the files; `install_script` is what runs on the node."""

from __future__ import annotations

import shlex
from importlib import resources

FAULT_KINDS = {
    "xid79": "kernel log gains 'NVRM: Xid ... 79, GPU has fallen off the bus' at the node's current uptime",
    "gpu-missing": "nvidia-smi lists 7 of 8 GPUs (GPU 3 at 0000:5D:00.0 gone)",
    "ib-port-down": "ibstat: mlx5_0 port 1 Down / Polling",
    "ib-rate-degraded": "ibstat: mlx5_0 port 1 Active at 200 Gb/s of 400",
    "nvlink-inactive": "nvidia-smi nvlink -s: GPU 1 links 4 and 5 <inactive>",
    "fm-stopped": "nvidia-fabricmanager inactive; dcgmi diag fails with 'system not yet initialized'",
    "peermem-missing": "lsmod without nvidia_peermem",
    "row-remap-pending": "nvidia-smi: GPU 3 reports a pending row remap",
}
PROFILE = "hgx-h100-8gpu"
SHIM_DIR = "/usr/local/sbin"
DATA_DIR = "/var/lib/podsys-fault"
SHIMS = ("nvidia-smi", "dcgmi", "ibstat", "dmesg", "lsmod", "systemctl")
_XID79 = "[@UPTIME@] NVRM: Xid (PCI:0000:5d:00): 79, pid='<unknown>', name=<unknown>, GPU has fallen off the bus.\n"


def capture(name: str, profile: str = PROFILE) -> str:
    return resources.files("podsys") .joinpath("data", "captures", profile, name).read_text()


def _one(text: str, old: str, new: str) -> str:
    if old not in text:
        raise ValueError(f"capture lacks {old!r}: the fault cannot be applied")
    return text.replace(old, new, 1)


def outputs(kind: str | None, profile: str = PROFILE) -> dict[str, str]:
    """The files the shims replay for this fault (None: healthy)."""
    if kind is not None and kind not in FAULT_KINDS:
        raise ValueError(f"unknown fault kind {kind!r}; one of: {', '.join(FAULT_KINDS)}")
    files = {name: capture(name, profile) for name in (
        "nvidia-smi-query.csv", "nvidia-smi-nvlink-s.txt", "nvidia-smi-q-pci.txt", "ibstat.txt", "dmesg.txt", "lsmod.txt", "dcgmi-diag.txt")}
    files["fabricmanager-state"] = "active\n"
    if kind == "xid79":
        files["dmesg.txt"] += _XID79
    elif kind == "gpu-missing":
        files["nvidia-smi-query.csv"] = "".join(line for line in files["nvidia-smi-query.csv"].splitlines(True) if "00000000:5D:00.0" not in line)
    elif kind == "ib-port-down":
        files["ibstat.txt"] = _one(_one(files["ibstat.txt"], "State: Active", "State: Down"), "Physical state: LinkUp", "Physical state: Polling")
    elif kind == "ib-rate-degraded":
        files["ibstat.txt"] = _one(files["ibstat.txt"], "Rate: 400", "Rate: 200")
    elif kind == "nvlink-inactive":
        gpu1 = files["nvidia-smi-nvlink-s.txt"].index("GPU 1:")
        head, tail = files["nvidia-smi-nvlink-s.txt"][:gpu1], files["nvidia-smi-nvlink-s.txt"][gpu1:]
        tail = _one(_one(tail, "Link 4: 26.562 GB/s", "Link 4: <inactive>"), "Link 5: 26.562 GB/s", "Link 5: <inactive>")
        files["nvidia-smi-nvlink-s.txt"] = head + tail
    elif kind == "fm-stopped":
        files["fabricmanager-state"] = "inactive\n"
        files["dcgmi-diag.txt"] = capture("dcgmi-diag-fm-stopped.txt", profile)
    elif kind == "peermem-missing":
        files["lsmod.txt"] = "".join(line for line in files["lsmod.txt"].splitlines(True) if not line.startswith("nvidia_peermem "))
        files["lsmod.txt"] = files["lsmod.txt"].replace("nvidia_uvm,nvidia_peermem,nvidia_modeset", "nvidia_uvm,nvidia_modeset")
    elif kind == "row-remap-pending":
        lines = files["nvidia-smi-query.csv"].splitlines(True)
        lines = [_one(line, ", No, No, 0,", ", Yes, No, 0,") if "00000000:5D:00.0" in line else line for line in lines]
        files["nvidia-smi-query.csv"] = "".join(lines)
    return files


def shim_scripts(data_dir: str = DATA_DIR) -> dict[str, str]:
    """The replaying commands, by name. Anything a shim was not given a capture for answers the
    way the real tool does when it cannot (non-zero, a message), never a made-up healthy value."""
    d = shlex.quote(data_dir)
    header = "#!/bin/sh\n# podsys lab fault shim: replays captured output (podsys/data/captures)\n"
    return {
        "nvidia-smi": header + f'''case "$*" in
  *--query-gpu=*) exec cat {d}/nvidia-smi-query.csv ;;
  "nvlink -s"|"nvlink --status") exec cat {d}/nvidia-smi-nvlink-s.txt ;;
  "-q -d PCI"|"-q") exec cat {d}/nvidia-smi-q-pci.txt ;;
  *) echo "podsys lab shim: no capture for nvidia-smi $*" >&2; exit 2 ;;
esac
''',
        "dcgmi": header + f'''case "$1" in
  diag) exec cat {d}/dcgmi-diag.txt ;;
  *) echo "podsys lab shim: no capture for dcgmi $*" >&2; exit 2 ;;
esac
''',
        "ibstat": header + f"exec cat {d}/ibstat.txt\n",
        "dmesg": header + f"exec cat {d}/dmesg.txt\n",
        "lsmod": header + f"exec cat {d}/lsmod.txt\n",
        # only `systemctl is-active nvidia-fabricmanager` is answered; everything else is the real one
        "systemctl": header + f'''if [ "$*" = "is-active nvidia-fabricmanager" ] || [ "$*" = "is-active nvidia-fabricmanager.service" ]; then
  state=$(cat {d}/fabricmanager-state); echo "$state"; [ "$state" = active ]; exit $?
fi
exec /usr/bin/systemctl "$@"
''',
    }


def install_script(kind: str | None, profile: str = PROFILE, shim_dir: str = SHIM_DIR, data_dir: str = DATA_DIR,
                   device_placeholders: bool = False) -> str:
    """A POSIX sh script that writes the captures and shims on the node (idempotent)."""
    lines = ["set -eu", f"mkdir -p {shlex.quote(data_dir)} {shlex.quote(shim_dir)}",
             "up=$(cut -d' ' -f1 /proc/uptime 2>/dev/null || echo 1.0)"]
    for name, content in outputs(kind, profile).items():
        target = shlex.quote(f"{data_dir}/{name}")
        body = content.replace("@UPTIME@", "PODSYS_UPTIME")
        lines.append(f"cat > {target}.tmp <<'PODSYS_EOF'\n{body}PODSYS_EOF")
        if "PODSYS_UPTIME" in body:
            lines.append(f'sed -i "s/PODSYS_UPTIME/$(printf %12.6f "$up")/" {target}.tmp')
        lines.append(f"mv {target}.tmp {target}")
    for name, script in shim_scripts(data_dir).items():
        target = shlex.quote(f"{shim_dir}/{name}")
        lines.append(f"cat > {target} <<'PODSYS_EOF'\n{script}PODSYS_EOF")
        lines.append(f"chmod 0755 {target}")
    # Slurm's gres.conf names /dev/nvidia[0-7] for a GPU profile and slurmd only stats them:
    # placeholders let a lab container node register its GPUs (lab only; never on real nodes)
    if device_placeholders:
        lines.append("for i in 0 1 2 3 4 5 6 7; do [ -e /dev/nvidia$i ] || touch /dev/nvidia$i; done")
    lines.append(f"echo {shlex.quote(kind or 'healthy')} > {shlex.quote(data_dir)}/kind")
    return "\n".join(lines) + "\n"


def clear_script(shim_dir: str = SHIM_DIR, data_dir: str = DATA_DIR) -> str:
    """Removes every shim and capture; tells the health runner the GPU was repaired (so the
    injected Xid, now gone from the log, does not stay open)."""
    shims = " ".join(shlex.quote(f"{shim_dir}/{name}") for name in SHIMS)
    return (f"set -eu\nrm -f {shims}\nrm -rf {shlex.quote(data_dir)}\n"
            f"if [ -x {shim_dir}/podsys-health ]; then {shim_dir}/podsys-health --clear-xid >/dev/null 2>&1 || true; fi\n")


def apply(directory, node: str, kind: str | None, clear: bool = False) -> str:
    """Install (or with clear, remove) the shims on a lab node over SSH; what was done, in words."""
    from podsys.errors import InputError, PodsysError, Problem
    from podsys.lab.cluster import run_ssh

    if clear and kind:
        raise InputError(Problem("command line", None, "KIND", "give either a fault KIND or --clear, not both"))
    if kind is not None and kind not in FAULT_KINDS:
        raise InputError(Problem("command line", None, "KIND", f"unknown fault kind {kind!r}; one of: {', '.join(FAULT_KINDS)}"))
    script = clear_script() if clear else install_script(kind, device_placeholders=True)
    # ssh hands the remote shell one string: quote the script as one argument of sh -c
    done = run_ssh(directory, node, ["sh", "-c", shlex.quote(script)], timeout=60)
    if done.returncode != 0:
        raise PodsysError(f"{node}: {(done.stderr or done.stdout).strip()[-300:] or f'exit {done.returncode}'}")
    if clear:
        return f"{node}: fault shims removed"
    return f"{node}: {kind}: {FAULT_KINDS[kind]}" if kind else f"{node}: healthy {PROFILE} shims installed"
