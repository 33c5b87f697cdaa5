"""The prolog tier: the catalogue's quick subset, run by Slurm's Prolog before every job. It must
run only its own checks and commands (no kernel log, no nvidia-smi -q, no metrics), catch the
faults a job cannot start on, never resume a drain, and say "prolog" in the drain reason."""

import json
import subprocess
import sys
import time

import pytest

from podsys.checks import health
from podsys.checks.catalog import CATALOG, checks_for_tier, passive_checks, prolog_checks
from podsys.checks.findings import Verdict
from podsys.checks.health_main import run as run_main
from tests.unit.checks.test_health import XID79, FakeNode, capture, config, facts


def run_tier(tmp_path, node, tier, profile_id="hgx-h100-8gpu"):
    return health.run_checks(config(profile_id), run=node, facts=facts(), state_dir=tmp_path, tier=tier)


def test_prolog_set_is_the_catalogues_prolog_tier_and_a_strict_subset_of_passive():
    prolog = {s.name for s in prolog_checks()}
    assert prolog == {"gpu.count", "gpu.ecc_errors", "gpu.fabric_manager", "infiniband.ports"}
    assert prolog == checks_for_tier("prolog") < checks_for_tier("passive") == {s.name for s in passive_checks()}
    assert not any(s.tier == "active" for s in passive_checks())
    with pytest.raises(ValueError, match="unknown tier 'active'"):
        checks_for_tier("active")


def test_prolog_runs_only_its_checks_and_their_quick_commands(tmp_path):
    node = FakeNode()
    findings = run_tier(tmp_path, node, "prolog")
    assert {f.check for f in findings} == checks_for_tier("prolog")
    assert all(f.verdict is Verdict.PASS for f in findings), [health.verdict_line(f) for f in findings]
    ran = sorted(c.split()[0] if not c.startswith("command -v ibstat") else "ibstat" for c in node.calls)
    assert ran == ["ibstat", "nvidia-smi", "systemctl"], node.calls
    assert not any(c.startswith(("dmesg", "nvidia-smi -q", "nvidia-smi nvlink", "lsmod")) or "journalctl" in c for c in node.calls)
    assert not (tmp_path / "xid-state.json").exists()  # the Xid cursor belongs to the periodic run


def test_passive_still_runs_everything(tmp_path):
    node = FakeNode()
    findings = run_tier(tmp_path, node, "passive")
    assert {f.check for f in findings} == checks_for_tier("passive")
    assert len(node.calls) == 7


@pytest.mark.parametrize("override, check, code", [
    ({"nvidia-smi --query-gpu": (0, "".join(capture("nvidia-smi-query.csv").splitlines(True)[:-1]))}, "gpu.count", "gpu-missing"),
    ({"systemctl is-active nvidia-fabricmanager": (3, "inactive\n")}, "gpu.fabric_manager", "fm-stopped"),
    ({"ibstat": (0, capture("ibstat.txt").replace("State: Active", "State: Down", 1))}, "infiniband.ports", "ib-port-down"),
])
def test_prolog_catches_what_a_job_cannot_start_on(tmp_path, override, check, code):
    findings = run_tier(tmp_path, FakeNode(**override), "prolog")
    assert {f.check for f in findings if f.verdict is Verdict.FAIL} == {check}
    assert [c for c, _ in health.failures(findings)] == [code]


def test_prolog_does_not_see_passive_only_faults(tmp_path):
    findings = run_tier(tmp_path, FakeNode(dmesg=(0, capture("dmesg.txt") + XID79)), "prolog")
    assert all(f.verdict is Verdict.PASS for f in findings)


def test_prolog_drain_says_prolog_and_requeues_the_starting_job(tmp_path):
    node = FakeNode(**{"systemctl is-active nvidia-fabricmanager": (3, "inactive\n"), "squeue -h -w gpu001": (0, "77\n")})
    decision = health.apply_slurm("gpu001", run_tier(tmp_path, node, "prolog"), run=node, tier="prolog")
    assert decision.action == "drain" and decision.reason.startswith("podsys:fm-stopped prolog gpu.fabric_manager: ")
    assert node.calls[-1] == "scontrol requeue 77"


def test_prolog_never_resumes_a_podsys_drain(tmp_path):
    # drained by the periodic run for an Xid, which the prolog does not look at
    scontrol = "NodeName=gpu001\n   State=IDLE+DRAIN\n   Reason=podsys:xid79 gpu.xid: Xid 79 [root@2026-11-29T00:41:07]\n"
    node = FakeNode(**{"scontrol show node": (0, scontrol)})
    decision = health.apply_slurm("gpu001", run_tier(tmp_path, node, "prolog"), run=node, tier="prolog")
    assert decision.action == "none" and "only the periodic run resumes" in decision.why
    assert not any(c.startswith("scontrol update") for c in node.calls)


def test_prolog_json_names_its_tier(tmp_path, capsys):
    path = tmp_path / "health.json"
    path.write_text(json.dumps(health.config_data("n1", __import__("tests.unit.checks.helpers", fromlist=["profile"]).profile("cpu-only"))))
    out = tmp_path / "out.txt"
    with out.open("w") as stream:
        assert run_main(path, tmp_path / "state", as_json=True, out=stream, tier="prolog") == 0
    data = json.loads(out.read_text())
    assert data["tier"] == "prolog" and data["findings"] == []  # a cpu-only node has nothing a job needs checked


def test_prolog_refuses_to_write_metrics(tmp_path):
    done = subprocess.run([sys.executable, "-m", "podsys.checks.health_main", "--tier", "prolog", "--textfile", str(tmp_path)],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "--textfile belongs to the passive run" in done.stderr


def test_prolog_is_well_under_the_passive_time_on_replayed_outputs(tmp_path):
    # every command costs the same here (a fixed delay): the prolog runs fewer, quicker ones
    # and skips the kernel log parse, so it must take clearly less than the passive run
    class SlowNode(FakeNode):
        def __call__(self, command):
            time.sleep(0.2 if command.startswith(("dmesg", "nvidia-smi -q")) else 0.05)
            return super().__call__(command)

    def timed(tier):
        started = time.monotonic()
        run_tier(tmp_path / tier, SlowNode(), tier)
        return time.monotonic() - started

    assert timed("prolog") < timed("passive") / 2


def test_prolog_template_runs_the_prolog_tier_without_metrics():
    from tests.conftest import REPO_ROOT

    text = (REPO_ROOT / "podsys/playbooks/roles/health/templates/podsys-health-prolog.j2").read_text()
    command = next(line for line in text.splitlines() if "podsys-health " in line and not line.startswith("#"))
    assert "--tier prolog" in command and "--slurm" in command and "--textfile" not in command
    assert text.rstrip().endswith("exit 0")


def test_catalogue_tiers_are_known():
    assert {s.tier for s in CATALOG} <= {"prolog", "passive", "active"}


@pytest.mark.parametrize("args, message", [
    (["--tier", "active"], "--tier: unknown tier 'active'; passive or prolog"),
    (["--tier", "prolog", "--textfile", "/tmp"], "--textfile: belongs to the passive run"),
])
def test_podsys_health_tier_bad_input_is_one_line_exit_2(args, message):
    from tests.conftest import invoke

    result = invoke("health", *args)
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
