#!/usr/bin/env python3
"""Deploy time on the lab cluster: the first `podsys deploy` (base + Slurm + monitoring) of a
fresh 1-node lab and of a fresh 4-node lab, and the repeat deploy (nothing to change) of the
1-node lab. Prints the times and the ratios against the goals:

    4 nodes <= 1.5 x 1 node      (hosts are configured in parallel)
    repeat  <= 0.3 x first       (a repeat deploy only verifies)

Each lab is new, so every first deploy installs every package through the head's proxy (the
Debian root of the containers is cached and shared). Needs root and what `podsys lab` needs.

    sudo python3 bench/deploy.py [--sizes 1,4] [--keep-logs DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from podsys.lab import cluster as lab  # noqa: E402

GOAL_SCALE = 1.5
GOAL_REPEAT = 0.30


def timed_deploy(manifest: Path, logs: Path | None, label: str) -> tuple[float, dict]:
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "podsys.cli.main", "deploy", str(manifest), "--json"],
                          capture_output=True, text=True, cwd=manifest.parent)
    elapsed = time.monotonic() - start
    if logs:
        (logs / f"{label}.stderr").write_text(proc.stderr)
    try:
        result = json.loads(proc.stdout)
    except ValueError:
        result = {"succeeded": False, "hosts": []}
    if proc.returncode != 0:
        failed = [f"{h['name']}: {h['reason']}" for h in result.get("hosts", []) if h.get("status") != "ok"]
        raise SystemExit(f"{label}: deploy failed (rc {proc.returncode}): {'; '.join(failed) or proc.stderr[-500:]}")
    return elapsed, result


def bench_lab(nodes: int, repeat: bool, logs: Path | None) -> dict[str, float]:
    directory = Path(tempfile.mkdtemp(prefix=f"podsys-bench-deploy-{nodes}n-"))
    times: dict[str, float] = {}
    try:
        start = time.monotonic()
        lab.up(directory, nodes=nodes)
        times["lab_up"] = time.monotonic() - start
        manifest = lab.paths_for(directory).manifest
        times["first"], first = timed_deploy(manifest, logs, f"{nodes}n-first")
        print(f"  {nodes} node(s): first deploy {times['first']:.1f} s, {first['changed_total']} changed tasks", flush=True)
        if repeat:
            times["repeat"], again = timed_deploy(manifest, logs, f"{nodes}n-repeat")
            print(f"  {nodes} node(s): repeat deploy {times['repeat']:.1f} s, {again['changed_total']} changed tasks", flush=True)
        if logs:
            shutil.copytree(directory / ".podsys" / "build" / "logs", logs / f"{nodes}n-ansible", dirs_exist_ok=True)
    finally:
        lab.down(directory)
        shutil.rmtree(directory, ignore_errors=True)
    return times


def verdict(value: float, goal: float) -> str:
    return "meets goal" if value <= goal else "MISSES goal"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1,4", help="compute node counts: small,large (default 1,4)")
    parser.add_argument("--keep-logs", type=Path, help="copy deploy logs here")
    args = parser.parse_args()
    problems = lab.missing_requirements()
    if problems:
        print("cannot run the lab here: " + "; ".join(problems), file=sys.stderr)
        return 2
    small, large = (int(x) for x in args.sizes.split(","))
    if args.keep_logs:
        args.keep_logs.mkdir(parents=True, exist_ok=True)

    print(f"podsys deploy on fresh lab clusters ({small} and {large} compute nodes + head)")
    one = bench_lab(small, repeat=True, logs=args.keep_logs)
    many = bench_lab(large, repeat=False, logs=args.keep_logs)

    scale = many["first"] / one["first"]
    repeat = one["repeat"] / one["first"]
    print()
    print(f"{'measurement':<34}{'seconds':>10}")
    print(f"{f'first deploy, {small} node(s)':<34}{one['first']:>10.1f}")
    print(f"{f'first deploy, {large} node(s)':<34}{many['first']:>10.1f}")
    print(f"{f'repeat deploy, {small} node(s)':<34}{one['repeat']:>10.1f}")
    print()
    print(f"{large} nodes / {small} node:  {scale:.2f}x   (goal <= {GOAL_SCALE}x: {verdict(scale, GOAL_SCALE)})")
    print(f"repeat / first:      {repeat:.2f}    (goal <= {GOAL_REPEAT}: {verdict(repeat, GOAL_REPEAT)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
