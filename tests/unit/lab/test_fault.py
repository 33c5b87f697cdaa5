"""podsys lab fault: the install script really runs (here, into a temp directory instead of
/usr/local/sbin), and the health runner, finding the shims first on its PATH, reports each
injected fault under its own fault code and nothing else."""

import functools
import subprocess
import time

import pytest

from podsys.checks import health
from podsys.checks.findings import Verdict
from podsys.lab import fault
from tests.unit.checks.helpers import profile
from tests.conftest import invoke

EXPECTED = {
    "xid79": {"xid79"}, "gpu-missing": {"gpu-missing"}, "ib-port-down": {"ib-port-down"},
    "ib-rate-degraded": {"ib-rate-degraded"}, "nvlink-inactive": {"nvlink-inactive"}, "fm-stopped": {"fm-stopped"},
    "peermem-missing": {"peermem-missing"}, "row-remap-pending": {"row-remap-pending"},
}


def install(tmp_path, kind):
    bin_dir, data_dir = tmp_path / "bin", tmp_path / "data"
    script = fault.install_script(kind, shim_dir=str(bin_dir), data_dir=str(data_dir))
    done = subprocess.run(["sh", "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return bin_dir, data_dir


def health_run(tmp_path, bin_dir):
    config = health.parse_config(health.config_data("gpu001", profile("hgx-h100-8gpu")))
    run = functools.partial(health.run_shell, path=f"{bin_dir}:{health.TOOL_PATH}")
    started = time.monotonic()
    findings = health.run_checks(config, run=run, state_dir=tmp_path / "state")
    return findings, time.monotonic() - started


def test_every_kind_the_issue_names_is_offered():
    assert set(fault.FAULT_KINDS) == set(EXPECTED)


def test_healthy_shims_pass_every_gpu_and_ib_check(tmp_path):
    bin_dir, _ = install(tmp_path, None)
    findings, seconds = health_run(tmp_path, bin_dir)
    gpu_ib = [f for f in findings if not f.check.startswith("node.")]
    assert gpu_ib and all(f.verdict is Verdict.PASS for f in gpu_ib), [health.verdict_line(f) for f in gpu_ib if f.verdict is not Verdict.PASS]
    assert seconds < 5


@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_each_fault_is_reported_under_its_code(tmp_path, kind):
    bin_dir, _ = install(tmp_path, kind)
    findings, _ = health_run(tmp_path, bin_dir)
    codes = {code for code, _ in health.failures(findings) if code not in ("disk-full", "memory-low")}
    assert codes == EXPECTED[kind], [health.verdict_line(f) for f in findings if f.verdict is Verdict.FAIL]


def test_dcgmi_shim_replays_fm_stopped_diag(tmp_path):
    from podsys.checks.dcgm import judge_dcgmi_diag, parse_dcgmi_diag

    bin_dir, _ = install(tmp_path, "fm-stopped")
    out = subprocess.run([str(bin_dir / "dcgmi"), "diag", "-r", "2"], capture_output=True, text=True).stdout
    (finding,) = judge_dcgmi_diag(parse_dcgmi_diag(out), "gpu001", profile("hgx-h100-8gpu"))
    assert finding.verdict is Verdict.FAIL and "fabric manager" in finding.diagnosis


def test_unknown_tool_arguments_fail_like_the_tool_would(tmp_path):
    bin_dir, _ = install(tmp_path, None)
    done = subprocess.run([str(bin_dir / "nvidia-smi"), "topo", "-m"], capture_output=True, text=True)
    assert done.returncode != 0 and "no capture" in done.stderr


def test_clear_removes_every_shim_and_capture(tmp_path):
    bin_dir, data_dir = install(tmp_path, "xid79")
    (bin_dir / "podsys-health").write_text("#!/bin/sh\necho cleared > \"$(dirname \"$0\")/cleared\"\n")
    (bin_dir / "podsys-health").chmod(0o755)
    done = subprocess.run(["sh", "-c", fault.clear_script(shim_dir=str(bin_dir), data_dir=str(data_dir))], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in bin_dir.iterdir()) == ["cleared", "podsys-health"] and not data_dir.exists()


def test_xid_line_carries_the_nodes_uptime(tmp_path):
    _, data_dir = install(tmp_path, "xid79")
    line = (data_dir / "dmesg.txt").read_text().splitlines()[-1]
    uptime = float(open("/proc/uptime").read().split()[0])
    stamp = float(line[1:line.index("]")])
    assert abs(stamp - uptime) < 60 and "Xid (PCI:0000:5d:00): 79" in line


def test_install_script_fits_one_ssh_argument():
    assert max(len(fault.install_script(k)) for k in [None, *fault.FAULT_KINDS]) < 100_000


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="unknown fault kind"):
        fault.outputs("gpu-on-fire")


def test_cli_refuses_a_kind_with_clear_and_unknown_kinds(tmp_path):
    both = invoke("lab", "fault", "node01", "xid79", "--clear", "--dir", tmp_path)
    unknown = invoke("lab", "fault", "node01", "gpu-on-fire", "--dir", tmp_path)
    for result, words in ((both, "not both"), (unknown, "unknown fault kind")):
        assert result.exit_code == 2 and words in result.output and "Traceback" not in result.output


def test_device_placeholders_only_when_asked():
    # the lab asks (slurmd stats gres.conf's /dev/nvidiaN); tests running the script here must not
    assert "/dev/nvidia" not in fault.install_script("xid79")
    assert "touch /dev/nvidia$i" in fault.install_script("xid79", device_placeholders=True)
