#!/usr/bin/env python3
"""Bundle build time and size for Debian 12 base+slurm+monitoring (manifests/lab.yaml): a cold
build into an empty directory, then a warm rebuild of the same directory (every download reused).
Prints both and the warm/cold ratio. Needs the Debian mirror (and PyPI for the wheels).

    python3 bench/bundle.py [--manifest manifests/lab.yaml] [--keep DIR] [--no-installer]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from podsys.bundle.build import build_bundle, plan_bundle  # noqa: E402
from podsys.cluster.load import load_cluster  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", type=Path, default=ROOT / "manifests" / "lab.yaml")
    parser.add_argument("--keep", type=Path, help="build here and keep it (default: a temporary directory)")
    parser.add_argument("--no-installer", action="store_true", help="leave out the netboot kernel and initrd")
    args = parser.parse_args()

    plan = plan_bundle(load_cluster(args.manifest), installer=not args.no_installer)
    work = args.keep or Path(tempfile.mkdtemp(prefix="podsys-bench-bundle-"))
    out = work / "bundle"
    if out.exists():
        shutil.rmtree(out)
    print(f"bundle for {plan.os_key} layers {', '.join(plan.layers)}: {len(plan.packages)} requested packages -> {out}")
    try:
        runs = []
        for label in ("cold", "warm"):
            start = time.perf_counter()
            result = build_bundle(plan, out)
            seconds = time.perf_counter() - start
            runs.append(seconds)
            print(
                f"{label}: {seconds:7.1f} s  {result.packages} packages ({result.downloaded} downloaded, "
                f"{result.reused} reused), {result.wheels} wheels, {len(result.boot)} boot files, "
                f"{result.files} files, {result.bytes / 1e6:.1f} MB"
            )
        print(f"warm/cold ratio: {runs[1] / runs[0]:.3f}")
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
