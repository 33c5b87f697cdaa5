#!/usr/bin/env python3
"""Image provisioning benchmark (root): what one head can do for N nodes.

  1. image build, cold (mmdebstrap + pack; from the image record, or --rebuild) and warm (an
     unchanged manifest: the key matches, the archive's sha256 is checked, nothing is built);
  2. the head's image serving: nginx (the head's web server) serving image.tar.zst from the
     store to N parallel HTTP clients on loopback, aggregate MB/s for N = 1, 4, 16;
  3. from these, the time to image 100 and 1,000 nodes through one 25 GbE head link.

Power-on to SSH is measured by the second mode, `--lab-vms` (root; about 40 minutes, or about 25
with `--steps first,one`): it brings up a lab (`podsys lab up --nodes 1 --vms 2`: a head and a
node container, vm01 SeaBIOS and vm02 UEFI with IPMI BMCs) in a temporary directory, or in DIR
with `--keep DIR`, and runs
  1. the first `podsys deploy lab.yaml --json`: its wall time, the image build (cold seconds, or
     "up to date") and each VM's power-on-to-SSH `elapsed`, both VMs installing at once;
  2. `podsys reinstall vm01` + deploy: power-on to SSH of one VM alone, and the deploy's wall time;
  3. `podsys reinstall 'vm[01-02]'` + deploy: both at once again, the image warm;
  4. a second plain deploy, nothing to install: its wall time;
then prints a table (step, wall s, image, per-VM elapsed s) and the ratio of the mean elapsed of
two VMs at once to one VM alone; `--json FILE` writes the figures. The lab is taken down at the
end unless --keep. The VMs run under TCG emulation, so their installs are CPU-bound on this
machine, not network-bound: the figures (and the 2-at-once ratio, which shows CPU contention)
do not extrapolate to hardware and are not used in the projection. The `elapsed` of a deploy is
podsys's own: seconds from the VM's power-on through its BMC until it answered SSH."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

LINK_GBPS = 25  # the head's provision link in the projection
# Per node, after the image is on disk: GRUB, identity, reboot, firmware POST and the OS boot.
# Server POST dominates (typically 2-5 min on GPU servers; 3 min used here).
POST_AND_BOOT_S = 180


NGINX_CONF = """\
worker_processes 2;
pid {dir}/nginx.pid;
error_log {dir}/error.log;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  sendfile on;
  tcp_nopush on;
  server {{
    listen 127.0.0.1:{port};
    root {root};
  }}
}}
"""


def serve_throughput(store: Path, key: str, clients: int, port: int) -> float:
    """Aggregate MB/s of `clients` parallel curl downloads of the image through nginx."""
    work = Path(tempfile.mkdtemp(prefix="podsys-bench-nginx-"))
    conf = work / "nginx.conf"
    conf.write_text(NGINX_CONF.format(dir=work, port=port, root=store))
    subprocess.run(["nginx", "-c", str(conf)], check=True)
    try:
        time.sleep(0.5)
        url = f"http://127.0.0.1:{port}/{key}/image.tar.zst"
        size = (store / key / "image.tar.zst").stat().st_size

        def fetch(_):
            subprocess.run(["curl", "-fsS", "-o", "/dev/null", url], check=True)

        start = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(fetch, range(clients)))
        elapsed = time.perf_counter() - start
        return clients * size / elapsed / 1e6
    finally:
        pid = int((work / "nginx.pid").read_text())
        subprocess.run(["nginx", "-c", str(conf), "-s", "stop"], check=False, capture_output=True)
        deadline = time.monotonic() + 10
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        shutil.rmtree(work, ignore_errors=True)


def projection(image_bytes: int, nodes: int, serve_bytes_per_s: float) -> float:
    """Seconds to image `nodes` nodes at once from one head: every node pulls the whole
    compressed image, at the head's serving rate, then POSTs and boots in parallel."""
    return nodes * image_bytes / serve_bytes_per_s + POST_AND_BOOT_S


# --lab-vms: power-on to SSH of the lab's QEMU VMs through `podsys deploy`.

LAB_VMS = ("vm01", "vm02")  # `podsys lab up --vms 2` names them so: vm01 SeaBIOS, vm02 UEFI
FIRST, ONE, BOTH, AGAIN = "first", "one", "both", "again"
STEP_TITLES = {
    FIRST: "first deploy, 2 VMs at once",
    ONE: "reinstall vm01, 1 VM alone",
    BOTH: "reinstall vm[01-02], 2 VMs at once",
    AGAIN: "plain deploy, nothing installed",
}
# deploy's stderr (podsys/deploy/node_images.py):
#   image debian-12-cpu-only-XXXX (2 nodes): built in 83.7 s from <source>
#   image debian-12-cpu-only-XXXX (2 nodes): up to date
IMAGE_LINE = re.compile(r"^image (?P<name>\S+) \((?P<nodes>\d+) nodes?\): "
                        r"(?:built in (?P<seconds>\d+(?:\.\d+)?) s|(?P<up_to_date>up to date))")


def parse_steps(text: str) -> list[str]:
    """--steps: a comma list of FIRST, ONE, BOTH, AGAIN in that order, starting with FIRST (the
    lab's VMs are blank until the first deploy). ValueError names what is wrong."""
    order = [FIRST, ONE, BOTH, AGAIN]
    steps = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in steps if s not in order]
    if unknown:
        raise ValueError(f"unknown step {unknown[0]!r}: choose from {', '.join(order)}")
    if not steps or steps[0] != FIRST:
        raise ValueError(f"the steps must start with {FIRST} (the VMs are blank until the first deploy)")
    if steps != sorted(set(steps), key=order.index):
        raise ValueError(f"each step once, in the order {', '.join(order)}")
    return steps


def parse_image_line(text: str) -> dict | None:
    """The first node-image line in deploy's stderr `text` (one line or the whole output):
    {"image", "nodes", "built_s" (None when up to date), "state" ("built" or "up to date")};
    None when there is none (no image-installed node, or deploy stopped before it)."""
    for line in text.splitlines():
        match = IMAGE_LINE.match(line.strip())
        if match:
            built = match["seconds"] is not None
            return {"image": match["name"], "nodes": int(match["nodes"]),
                    "built_s": float(match["seconds"]) if built else None,
                    "state": "built" if built else "up to date"}
    return None


def vm_elapsed(summary: dict | None) -> dict[str, float | None]:
    """Per node this deploy installed, from its `--json` summary (installs.nodes): seconds from
    power-on until it answered SSH, or None when it did not come up (phase not "reachable").
    Empty when the deploy installed nothing (or printed no installs)."""
    installs = (summary or {}).get("installs") or {}
    return {n["node"]: (float(n["elapsed"]) if n.get("phase") == "reachable" else None)
            for n in installs.get("nodes", [])}


def mean_elapsed(elapsed: dict[str, float | None]) -> float | None:
    """Mean over the step's VMs; None when there are none or one of them did not come up."""
    values = list(elapsed.values())
    if not values or any(v is None for v in values):
        return None
    return sum(values) / len(values)


def _cell(value: float | None, width: int) -> str:
    return f"{value:{width}.1f}" if value is not None else f"{'-':>{width}}"


def ratio_table(steps: list[dict]) -> tuple[str, dict[str, float | None]]:
    """The table (step, wall s, image, per-VM elapsed s) of `steps`, each {"step" (FIRST, ONE,
    BOTH, AGAIN), "wall_s", "image" (parse_image_line's or None), "elapsed" (vm_elapsed's)},
    and the ratios of mean elapsed, 2 VMs at once / 1 VM alone: "both" (the reinstall of both,
    like for like with the one) and "first" (the first install). A ratio is None when a step is
    missing or one of its VMs did not come up. A VM a step did not install shows "-"; one that
    did not come up "failed"."""
    vms = sorted({vm for s in steps for vm in s["elapsed"]} | set(LAB_VMS))
    title_w = max([len(STEP_TITLES[s["step"]]) for s in steps] + [4])
    header = f"{'step':<{title_w}}  {'wall s':>7}  {'image':<14}" + "".join(f"  {vm + ' s':>8}" for vm in vms)
    lines = [header, "-" * len(header)]
    for s in steps:
        image = s.get("image")
        image_text = "-" if image is None else (
            f"built {image['built_s']:.1f} s" if image["built_s"] is not None else "up to date")
        cells = []
        for vm in vms:
            if vm not in s["elapsed"]:
                cells.append(f"  {'-':>8}")
            elif s["elapsed"][vm] is None:
                cells.append(f"  {'failed':>8}")
            else:
                cells.append("  " + _cell(s["elapsed"][vm], 8))
        lines.append(f"{STEP_TITLES[s['step']]:<{title_w}}  {_cell(s.get('wall_s'), 7)}  {image_text:<14}" + "".join(cells))
    by_step = {s["step"]: mean_elapsed(s["elapsed"]) for s in steps}
    one = by_step.get(ONE)
    ratios = {key: (by_step[step] / one if by_step.get(step) is not None and one else None)
              for key, step in (("both", BOTH), ("first", FIRST))}
    for key, step in (("both", BOTH), ("first", FIRST)):
        ratio = ratios[key]
        lines.append(f"power-on to SSH, mean of 2 VMs at once ({STEP_TITLES[step].split(',')[0]}) / 1 VM alone: "
                     + (f"{ratio:.2f}" if ratio is not None else "n/a"))
    return "\n".join(lines), ratios


def podsys_env() -> dict:
    """The environment for `python -m podsys.cli.main` children: this checkout on PYTHONPATH."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def run_podsys(*args: str, timeout: float) -> subprocess.CompletedProcess:
    """`podsys ARGS`, its output passed through to ours (progress for a long run)."""
    argv = [sys.executable, "-m", "podsys.cli.main", *args]
    print(f"$ podsys {' '.join(args)}", file=sys.stderr, flush=True)
    return subprocess.run(argv, cwd=REPO, env=podsys_env(), stdin=subprocess.DEVNULL, timeout=timeout)


def timed_deploy(manifest: Path, step: str) -> dict:
    """One `podsys deploy MANIFEST --json`: its stderr streamed to ours as it comes, its JSON
    parsed. Returns the step's figures (ratio_table's shape) plus rc and the nodes that did not
    come up."""
    argv = [sys.executable, "-m", "podsys.cli.main", "deploy", str(manifest), "--json"]
    print(f"$ podsys deploy {manifest} --json   [{STEP_TITLES[step]}]", file=sys.stderr, flush=True)
    start = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=REPO, env=podsys_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    err = []
    for line in proc.stderr:  # stdout is only the JSON at the end: it cannot fill its pipe first
        err.append(line)
        sys.stderr.write(line)
        sys.stderr.flush()
    out = proc.communicate()[0]
    wall = time.perf_counter() - start
    try:
        summary = json.loads(out)
    except json.JSONDecodeError:
        summary = None
    installs = (summary or {}).get("installs") or {}
    return {"step": step, "wall_s": round(wall, 1), "rc": proc.returncode, "image": parse_image_line("".join(err)),
            "elapsed": vm_elapsed(summary), "did_not": installs.get("did_not", []),
            "summary_parsed": summary is not None}


def lab_vms_bench(directory: Path, json_path: Path | None, wanted: list[str] | None = None) -> int:
    """The --lab-vms sequence in `directory` (the lab is left up; the caller takes it down);
    `wanted` (parse_steps's) runs only those steps."""
    up = run_podsys("lab", "up", "--nodes", "1", "--vms", str(len(LAB_VMS)), "--dir", str(directory), timeout=1800)
    if up.returncode != 0:
        print(f"lab up failed (rc {up.returncode})", file=sys.stderr)
        return 1
    manifest = directory / "lab.yaml"
    steps: list[dict] = []
    plan = [(FIRST, None), (ONE, "vm01"), (BOTH, f"vm[01-{len(LAB_VMS):02d}]"), (AGAIN, None)]
    plan = [(step, reinstall) for step, reinstall in plan if wanted is None or step in wanted]
    failed = None
    for step, reinstall in plan:
        if reinstall is not None:
            switched = run_podsys("reinstall", reinstall, "-m", str(manifest), timeout=600)
            if switched.returncode != 0:
                failed = f"podsys reinstall {reinstall} failed (rc {switched.returncode})"
                break
        figures = timed_deploy(manifest, step)
        steps.append(figures)
        if figures["rc"] != 0 or not figures["summary_parsed"]:
            failed = f"deploy ({STEP_TITLES[step]}) failed (rc {figures['rc']})" + (
                "" if figures["summary_parsed"] else ", no JSON summary")
            break
        if step == AGAIN and figures["elapsed"]:
            failed = f"the plain deploy installed {sorted(figures['elapsed'])}: expected nothing"
    table, ratios = ratio_table(steps)
    print(table)
    for s in steps:
        for d in s["did_not"]:
            print(f"{STEP_TITLES[s['step']]}: {d.get('node')} did not come up: {d.get('phase')} "
                  f"at {d.get('stage')} ({d.get('why')})")
    if failed:
        print(f"stopped: {failed}", file=sys.stderr)
    if json_path is not None:
        figures = {"lab": {"nodes": 1, "vms": list(LAB_VMS)},
                   "steps": [{k: v for k, v in s.items() if k != "summary_parsed"} | {"title": STEP_TITLES[s["step"]]}
                             for s in steps],
                   "ratio_2_at_once_to_1": ratios, "failed": failed}
        json_path.write_text(json.dumps(figures, indent=2) + "\n")
        print(f"figures: {json_path}")
    return 1 if failed else 0


def lab_vms_main(keep: Path | None, json_path: Path | None, wanted: list[str] | None = None) -> int:
    if os.geteuid() != 0:
        print("--lab-vms needs root (the lab's namespaces, bridge, QEMU and BMCs): run it with sudo", file=sys.stderr)
        return 2
    directory = keep.resolve() if keep is not None else Path(tempfile.mkdtemp(prefix="podsys-bench-labvms-"))
    directory.mkdir(parents=True, exist_ok=True)
    try:
        return lab_vms_bench(directory, json_path.resolve() if json_path is not None else None, wanted)
    finally:
        if keep is None:
            down = run_podsys("lab", "down", "--dir", str(directory), timeout=900)
            if down.returncode == 0:
                shutil.rmtree(directory, ignore_errors=True)
            else:
                print(f"lab down failed (rc {down.returncode}): {directory} left as it is", file=sys.stderr)
        else:
            print(f"lab kept in {directory} (podsys lab down --dir {directory})", file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("manifest", type=Path, nargs="?", help="image mode: the cluster manifest")
    parser.add_argument("--store", type=Path, help="image mode: the image store (required there)")
    parser.add_argument("--mirror", help="image mode: the package mirror (required there)")
    parser.add_argument("--lab-vms", action="store_true",
                        help="measure power-on to SSH of two lab VMs through podsys deploy (root, ~15 min)")
    parser.add_argument("--keep", type=Path, metavar="DIR",
                        help="--lab-vms: bring the lab up in DIR and leave it up (default: a temporary "
                             "directory, taken down at the end)")
    parser.add_argument("--json", type=Path, metavar="FILE", dest="json_path",
                        help="--lab-vms: also write the figures to FILE as JSON")
    parser.add_argument("--steps", metavar="LIST",
                        help=f"--lab-vms: only these steps, e.g. {FIRST},{ONE} for the 1-VM-against-2 ratio "
                             f"in about half the time (default: {FIRST},{ONE},{BOTH},{AGAIN})")
    args = parser.parse_args()
    if args.lab_vms:
        if args.manifest is not None or args.store is not None or args.mirror is not None:
            parser.error("--lab-vms takes no manifest, --store or --mirror (the lab writes its own)")
        try:
            wanted = parse_steps(args.steps) if args.steps is not None else None
        except ValueError as exc:
            parser.error(f"--steps: {exc}")
        return lab_vms_main(args.keep, args.json_path, wanted)
    if args.keep is not None or args.json_path is not None or args.steps is not None:
        parser.error("--keep, --json and --steps go with --lab-vms")
    if args.manifest is None or args.store is None or args.mirror is None:
        parser.error("the image mode needs MANIFEST, --store and --mirror (or use --lab-vms)")
    cmd = [sys.executable, "-m", "podsys.cli.main", "image", "build", str(args.manifest), "--store", str(args.store),
           "--mirror", args.mirror, "--apt-option", 'Acquire::Check-Valid-Until "false"']
    subprocess.run(cmd, check=True, cwd=REPO, capture_output=True)  # cold, unless already built
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO, capture_output=True)
    warm = time.perf_counter() - start
    listed = json.loads(subprocess.run([sys.executable, "-m", "podsys.cli.main", "image", "list", "--store",
                                        str(args.store), "--json"], check=True, cwd=REPO, capture_output=True,
                                       text=True).stdout)
    record = listed[0]
    print(f"image {record['name']}: {record['archive_bytes'] / 1e6:.0f} MB compressed, "
          f"{record['unpacked_bytes'] / 1e6:.0f} MB unpacked, {record['packages']} packages")
    print(f"image build: cold {record['build_seconds']:.0f} s (mmdebstrap + pack), warm {warm:.1f} s (key match + sha256)")
    rates = {}
    for clients in (1, 4, 16):
        rates[clients] = serve_throughput(args.store, record["key"], clients, port=18100 + clients)
        print(f"nginx serving the image to {clients:2d} parallel clients (loopback): {rates[clients]:.0f} MB/s aggregate")
    link = LINK_GBPS * 1e9 / 8
    for nodes in (100, 1000):
        at_link = projection(record["archive_bytes"], nodes, link)
        at_measured = projection(record["archive_bytes"], nodes, rates[16] * 1e6)
        print(f"projection, {nodes:4d} nodes: {LINK_GBPS} GbE line rate {at_link / 60:.1f} min; "
              f"at this machine's measured 16-client rate {at_measured / 60:.1f} min "
              f"(both + {POST_AND_BOOT_S} s POST/boot)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
