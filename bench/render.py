#!/usr/bin/env python3
"""Validate + render benchmark: 512 and 4,096 GPU nodes (four groups, BMC and IPoIB networks).

Prints the wall time of each (best of --repeat runs, cold build directory each time) and the
ratio 4096/512. Goals (issue "Cluster manifest, compatibility matrix and rendering"): 4,096
nodes in under 2 s on a 2-core machine, ratio <= 9 (linear); issue 12 item 5: the full build
of 4,096 nodes cold on disk under 1 s. Measured twice: the core build (inventory and vars,
with Slurm and Prometheus facts) and the full build, which adds the head's boot services (one
node table the status service makes every iPXE script from, installer configs only for
`method: installer` nodes) and the cluster's health.json, cold and warm (a re-render that
changes nothing). The files each build writes are counted: a file per node would show here."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import podsys.render.build as render  # noqa: E402
from podsys.cluster.load import load_cluster  # noqa: E402

GROUPS = [("h100a", "hgx-h100-8gpu", 16), ("h100b", "hgx-h100-8gpu", 32), ("h200", "hgx-h200-8gpu", 48), ("b200", "hgx-b200-8gpu", 64)]


def write_cluster(directory: Path, nodes: int) -> Path:
    per_group = nodes // len(GROUPS)
    macs = ["hostname,mac"]
    groups = []
    for k, (name, hw, third_octet) in enumerate(GROUPS, start=1):
        groups.append(
            f"  - {{name: {name}, hosts: \"{name}-[0001-{per_group:04d}]\", hardware: {hw}, "
            f"start_address: 10.128.{third_octet}.1, disk: /dev/nvme0n1, macs_file: macs.csv}}"
        )
        macs += [f"{name}-{i:04d},b8:3f:d2:{k:02x}:{i // 256:02x}:{i % 256:02x}" for i in range(1, per_group + 1)]
    (directory / "macs.csv").write_text("\n".join(macs) + "\n")
    text = (REPO / "manifests/large-4096.yaml").read_text()
    head, _, rest = text.partition("node_groups:\n")
    _, _, tail = rest.partition("slurm:\n")
    path = directory / "cluster.yaml"
    path.write_text(head + "node_groups:\n" + "\n".join(groups) + "\nslurm:\n" + tail)
    return path


FILES: dict[int, int] = {}  # nodes -> files in the last build directory
# nodes -> least CPU time (user+system of this process) of the runs: on a machine other jobs
# load, wall time mostly measures the wait for a core; CPU time stays close to the quiet figure.
CPU: dict[int, float] = {}


def run_once(nodes: int, warm: bool = False, where: str | None = None) -> float:
    directory = Path(tempfile.mkdtemp(prefix=f"podsys-bench-{nodes}-", dir=where))
    try:
        path = write_cluster(directory, nodes)
        if warm:
            render.render_cluster(load_cluster(path), directory / "build")
        start, cpu_start = time.perf_counter(), time.process_time()
        cluster = load_cluster(path)
        result = render.render_cluster(cluster, directory / "build")
        elapsed = time.perf_counter() - start
        CPU[nodes] = min(CPU.get(nodes, float("inf")), time.process_time() - cpu_start)
        assert len(cluster.nodes) == nodes, len(cluster.nodes)
        assert result.touched != warm
        FILES[nodes] = sum(len(names) for _, _, names in os.walk(directory / "build"))
        return elapsed
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def report(label: str, times: dict[int, float], goal_s: float = 2.0) -> None:
    ratio = times[4096] / times[512]
    print(f"{label}:  512 nodes {times[512]:.3f} s | 4096 nodes {times[4096]:.3f} s"
          f" (goal < {goal_s:g} s: {'met' if times[4096] < goal_s else 'MISSED'}) | ratio {ratio:.2f}"
          f" (goal <= 9: {'met' if ratio <= 9 else 'MISSED'}) | {FILES[4096]:,} files at 4096"
          f" | CPU time 4096 nodes {CPU[4096]:.3f} s")
    CPU.clear()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    run_once(64)  # warm imports and template caches
    CPU.clear()
    everything = list(render.RENDERERS)
    render.RENDERERS[:] = [render.render_core_files]
    report("validate+render, core build  ", {n: min(run_once(n) for _ in range(args.repeat)) for n in (512, 4096)})
    render.RENDERERS[:] = everything
    report("validate+render, full, cold  ", {n: min(run_once(n) for _ in range(args.repeat)) for n in (512, 4096)}, goal_s=1.0)
    if Path("/dev/shm").is_dir():
        # Same work with the files on tmpfs: separates podsys's own cost from the disk's cost
        # of creating 20,000 small files.
        report("  ... cold, build on tmpfs   ", {n: min(run_once(n, where="/dev/shm") for _ in range(args.repeat)) for n in (512, 4096)})
    report("validate+render, full, warm  ", {n: min(run_once(n, warm=True) for _ in range(args.repeat)) for n in (512, 4096)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
