import json

import pytest

from tests.conftest import invoke as invoke_cli
from tests.unit.checks.helpers import FIXTURES


def invoke(*args):
    return invoke_cli("check", *args)


@pytest.mark.parametrize(
    "kind, name, code",
    [
        ("nccl", "nccl_all_reduce_8xh100_single_node.txt", 0),
        ("nccl", "nccl_all_reduce_multinode_socket_fallback.txt", 1),
        ("perftest", "ib_write_bw_mb_old_degraded.txt", 1),
        ("ibstat", "ibstat_8x_ndr_healthy.txt", 0),
        ("ibstat", "ibstat_8x_ndr_degraded_and_down.txt", 1),
        ("nvidia-smi-topo", "nvidia_smi_topo_8xh100_missing_nvlink.txt", 1),
        ("nvidia-smi-query", "nvidia_smi_query_7of8_faults.csv", 1),
        ("nvidia-smi-nvlink", "nvidia_smi_nvlink_s_inactive.txt", 1),
        ("dcgmi-diag", "dcgmi_diag_r2_pass_dcgm3.txt", 0),
        ("nvbandwidth", "nvbandwidth_cuda_802.txt", 1),
        ("dmesg", "dmesg_xid79_and_downtrained_nic.txt", 1),
        # the driver is loaded; without peermem a module list alone cannot show DMA-BUF (SKIP)
        ("modules", "proc_modules_no_peermem.txt", 0),
        ("gpudirect", "versions_raw_gpudirect_none.txt", 1),
        ("gpudirect", "versions_raw_gpudirect_dmabuf.txt", 0),
        ("lspci", "lspci_acs_enabled.txt", 1),
        ("prometheus-targets", "prometheus_targets_one_down.json", 1),
    ],
)
def test_parse_exit_codes(kind, name, code):
    result = invoke("parse", kind, str(FIXTURES / name), "--profile", "hgx-h100-8gpu")
    assert result.exit_code == code, result.output


def test_parse_json_output():
    result = invoke("parse", "nccl", str(FIXTURES / "nccl_all_reduce_2x8xh100_multinode.txt"), "--profile", "hgx-h100-8gpu", "--json", "--node", "pair1")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    bw = next(f for f in data["findings"] if f["check"] == "nccl.multinode.all_reduce")
    assert bw["node"] == "pair1" and bw["verdict"] == "PASS" and bw["threshold"] == 300 and bw["limit"] == 400
    assert data["summary"]["FAIL"] == 0


def test_parse_without_profile_skips_thresholds_but_still_flags_faults():
    result = invoke("parse", "nccl", str(FIXTURES / "nccl_all_reduce_multinode_socket_fallback.txt"), "--json")
    data = json.loads(result.stdout)
    verdicts = {f["check"]: f["verdict"] for f in data["findings"]}
    assert verdicts["nccl.multinode.all_reduce"] == "SKIP" and verdicts["nccl.multinode.transport"] == "FAIL"
    assert result.exit_code == 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["parse", "bogus", "x"], "unknown kind"),
        (["parse", "nccl", "/nonexistent/file"], "cannot read"),
        (["parse", "ibstat", str(FIXTURES / "dmesg_clean.txt")], "not ibstat output"),
        (["parse", "nccl", str(FIXTURES / "ibstat_8x_ndr_healthy.txt")], "no nccl-tests result rows"),
        (["parse", "ibstat", str(FIXTURES / "ibstat_8x_ndr_healthy.txt"), "--profile", "h100"], "unknown hardware profile"),
        (["parse", "nccl"], "usage: podsys check parse"),
        (["/nonexistent/cluster.yaml"], "file not found"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, message):
    result = invoke(*args)
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


def test_collective_must_be_known_when_output_does_not_say(tmp_path):
    text = (FIXTURES / "nccl_all_reduce_perf_8xa100_old_error_column.txt").read_text()
    saved = tmp_path / "run1.log"
    saved.write_text(text)
    assert invoke("parse", "nccl", str(saved)).exit_code == 2
    result = invoke("parse", "nccl", str(saved), "--collective", "all_reduce", "--profile", "hgx-a100-8gpu", "--json")
    assert result.exit_code == 0
    assert "nccl.all_reduce" in {f["check"] for f in json.loads(result.stdout)["findings"]}


def test_parse_reads_stdin_and_json_matches_schema():
    import jsonschema
    from importlib import resources

    text = (FIXTURES / "ibstat_8x_ndr_degraded_and_down.txt").read_text()
    result = invoke_cli("check", "parse", "ibstat", "-", "--profile", "hgx-h100-8gpu", "--json", input=text)
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert {f["node"] for f in data["findings"]} == {"stdin"}
    jsonschema.validate(data, json.loads((resources.files("podsys") / "data" / "check-report.schema.json").read_text()))


def test_via_slurm_is_offered_and_needs_the_slurm_layer(tmp_path):
    from tests.conftest import write_manifest_variant

    assert "--via-slurm" in invoke("--help").output
    manifest = write_manifest_variant(tmp_path, "lab", layers=["base", "monitoring"])
    result = invoke(str(manifest), "--via-slurm", "-o", str(tmp_path / "out"))
    assert result.exit_code == 2, result.output
    assert "--via-slurm needs the slurm layer" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()
