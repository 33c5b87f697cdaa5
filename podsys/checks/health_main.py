"""Entry point of the health runner: on a node, /usr/local/sbin/podsys-health runs it from
podsys_health_runner.py (health_files.RUNNER_SCRIPT: these modules in one script); on the
head, `podsys health` calls it.

Standard library only (argparse, not typer): nodes carry no podsys package, only these modules."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from podsys.checks import health
from podsys.checks.findings import Verdict

EXIT_OK, EXIT_FAIL, EXIT_INPUT = 0, 1, 2


def run(config_path: Path, state_dir: Path, as_json: bool = False, slurm: bool = False, textfile: Path | None = None,
        clear_xid: bool = False, out=None, err=None, tier: str = "passive", node: str | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    try:
        config = health.load_config(config_path, node)
    except ValueError as exc:
        print(f"error: {exc}", file=err)
        return EXIT_INPUT
    if clear_xid:
        health.clear_xid(state_dir)
    started = time.monotonic()
    findings = health.run_checks(config, state_dir=state_dir, tier=tier)
    elapsed = time.monotonic() - started
    action = health.apply_slurm(config.node, findings, tier=tier) if slurm else None
    if textfile is not None:
        try:
            health.write_metrics(textfile, health.metrics_text(findings, config.node))
        except OSError as exc:
            print(f"warning: cannot write metrics to {textfile}: {exc.strerror or exc}", file=err)
    failed = any(f.verdict is Verdict.FAIL for f in findings)
    if as_json:
        data = {"node": config.node, "profile": config.profile.id, "tier": tier, "seconds": round(elapsed, 3),
                "verdict": "FAIL" if failed else "PASS", "faults": [code for code, _ in health.failures(findings)],
                "findings": [f.to_dict() for f in findings]}
        if action is not None:
            data["slurm"] = {"action": action.action, "reason": action.reason, "why": action.why}
        out.write(json.dumps(data, indent=2) + "\n")
    else:
        for f in findings:
            print(health.verdict_line(f), file=out)
        if action is not None and action.action != "none":
            print(f"slurm: {action.action} {action.reason}".rstrip(), file=out)
    return EXIT_FAIL if failed else EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="podsys-health", description="podsys passive node health checks")
    parser.add_argument("--config", type=Path, default=health.DEFAULT_CONFIG, help="health.json deploy installed")
    parser.add_argument("--node", help="this node's name in the cluster's health.json (default: the hostname)")
    parser.add_argument("--state-dir", type=Path, default=health.DEFAULT_STATE_DIR, help="where the Xid cursor lives")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--slurm", action="store_true", help="drain/resume this node in Slurm (HealthCheckProgram)")
    parser.add_argument("--textfile", type=Path, help="node_exporter textfile collector directory for the metrics")
    parser.add_argument("--clear-xid", action="store_true", help="after a repair: forget this boot's hardware Xids")
    parser.add_argument("--tier", choices=("passive", "prolog"), default="passive",
                        help="passive: every check (HealthCheckProgram); prolog: the quick gate before a job")
    args = parser.parse_args(argv)
    if args.tier == "prolog" and args.textfile is not None:
        # the prolog sees a subset: its metrics file would hide the other checks' failures
        parser.error("--textfile belongs to the passive run")
    return run(args.config, args.state_dir, args.json, args.slurm, args.textfile, args.clear_xid, tier=args.tier,
               node=args.node)


if __name__ == "__main__":
    sys.exit(main())
