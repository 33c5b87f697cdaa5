#!/usr/bin/env python3
"""`podsys health` time on one node, as Slurm's HealthCheckProgram runs it: the deployed runner
(the stdlib-only modules `podsys render` writes to BUILD/health/runner) started as a fresh
process, once for a GPU node (hgx-h100-8gpu; the `podsys lab fault` shims replaying captured
nvidia-smi, ibstat, dmesg, lsmod outputs come first on its PATH) and once for a cpu-only node.
Goals: under 5 s with the GPU profile, under 1 s cpu-only. Needs nothing but python3.

    python3 bench/health.py [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from podsys.checks.health import TOOL_PATH, config_data  # noqa: E402
from podsys.checks.health_files import runner_files  # noqa: E402
from podsys.cluster.hardware import builtin_profiles  # noqa: E402
from podsys.lab.fault import install_script  # noqa: E402

GOALS = {"hgx-h100-8gpu": 5.0, "cpu-only": 1.0}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="podsys-bench-health-"))
    for path, content in runner_files().items():  # the runner exactly as deploy installs it
        target = work / "opt" / path.removeprefix("health/runner/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
    shims = work / "shims"
    subprocess.run(["sh", "-c", install_script(None, shim_dir=str(shims), data_dir=str(work / "captures"))], check=True)
    ok = True
    for profile_id, goal in GOALS.items():
        config = work / f"{profile_id}.json"
        config.write_text(json.dumps(config_data("bench01", builtin_profiles()[profile_id])))
        # the runner reads its PATH from TOOL_PATH; the shims go first the way /usr/local/sbin does on a node
        code = (f"import sys; sys.path.insert(0, {str(work / 'opt')!r}); import podsys.checks.health as h; "
                f"h.TOOL_PATH = {str(shims) + ':' + TOOL_PATH!r}; h.run_shell.__defaults__ = (h.TOOL_PATH,); "
                f"from podsys.checks.health_main import main; sys.exit(main(['--config', {str(config)!r}, "
                f"'--state-dir', {str(work / 'state' / profile_id)!r}, '--json']))")
        times, verdict = [], None
        for _ in range(args.runs):
            started = time.perf_counter()
            done = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, env={"PATH": os.environ["PATH"]})
            times.append(time.perf_counter() - started)
            verdict = json.loads(done.stdout)["verdict"] if done.stdout.strip() else f"rc {done.returncode}: {done.stderr[-200:]}"
        median = statistics.median(times)
        met = median < goal and verdict == "PASS"
        ok &= met
        print(f"{profile_id:15} median {median:.3f} s (min {min(times):.3f}, max {max(times):.3f}, {args.runs} runs), "
              f"verdict {verdict}, goal < {goal:g} s: {'met' if met else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
