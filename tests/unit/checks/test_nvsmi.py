from podsys.checks.findings import Verdict
from podsys.checks.nvsmi import QUERY_FIELDS, judge_nvlink_status, judge_query_gpu, judge_topo, parse_nvlink_status, parse_query_gpu, parse_topo
from tests.unit.checks.helpers import by_check, fixture, one, profile

H100 = profile("hgx-h100-8gpu")


def test_topo_healthy_every_pair_nv18():
    topo = parse_topo(fixture("nvidia_smi_topo_8xh100_healthy.txt"))
    assert topo.gpus == [f"GPU{i}" for i in range(8)]
    assert topo.links[("GPU0", "GPU7")] == "NV18"
    assert not any(k[1].startswith("NIC") for k in topo.links)
    (finding,) = judge_topo(topo, "gpu001", H100)
    assert finding.verdict is Verdict.PASS


def test_topo_missing_nvlink_names_the_pairs():
    (finding,) = judge_topo(parse_topo(fixture("nvidia_smi_topo_8xh100_missing_nvlink.txt")), "gpu001", H100)
    assert finding.verdict is Verdict.FAIL
    assert "GPU0-GPU3 NODE" in finding.detail and "GPU3-GPU4 SYS" in finding.detail
    assert finding.value == 7 and "nvlink -s" in finding.diagnosis


def test_topo_pcie_board_is_not_held_to_nvlink():
    text = fixture("nvidia_smi_topo_8xh100_missing_nvlink.txt")
    (finding,) = judge_topo(parse_topo(text), "l40s01", profile("pcie-l40s"))
    assert finding.verdict is Verdict.PASS


def test_query_fields_are_parsed_without_units():
    gpus = parse_query_gpu(fixture("nvidia_smi_query_8xh100_healthy.csv"))
    assert len(gpus) == 8 and gpus[0]["clocks.max.sm"] == "1980 MHz"
    assert set(QUERY_FIELDS) <= set(gpus[0])


def test_query_healthy_all_pass():
    findings = judge_query_gpu(parse_query_gpu(fixture("nvidia_smi_query_8xh100_healthy.csv")), "gpu001", H100)
    assert {f.check for f in findings} == {"gpu.count", "gpu.model", "gpu.persistence", "gpu.ecc_mode", "gpu.ecc_errors", "gpu.clocks"}
    assert all(f.verdict is Verdict.PASS for f in findings)


def test_missing_gpu_names_expected_pci_address_and_ecc_and_throttle_fail():
    findings = judge_query_gpu(parse_query_gpu(fixture("nvidia_smi_query_7of8_faults.csv")), "gpu001", H100)
    count = one(findings, "gpu.count")
    assert count.verdict is Verdict.FAIL and "00000000:5D:00.0" in count.detail and count.value == 7
    ecc = one(findings, "gpu.ecc_errors")
    assert ecc.verdict is Verdict.FAIL
    assert "row remap pending" in ecc.detail and "row remap failure" in ecc.detail and "uncorrectable SRAM" in ecc.detail
    clocks = one(findings, "gpu.clocks")
    assert clocks.verdict is Verdict.FAIL and "HW thermal slowdown" in clocks.detail


def test_wrong_model_and_persistence_off():
    text = fixture("nvidia_smi_query_8xh100_healthy.csv").replace("Enabled, Enabled", "Disabled, Enabled", 1)
    findings = judge_query_gpu(parse_query_gpu(text), "gpu001", profile("hgx-h200-8gpu"))
    assert one(findings, "gpu.model").verdict is Verdict.FAIL
    assert one(findings, "gpu.persistence").verdict is Verdict.WARN


def test_nounits_variant_parses():
    lines = fixture("nvidia_smi_query_8xh100_healthy.csv").replace(" MHz", "").splitlines()
    gpus = parse_query_gpu("\n".join(lines))
    assert gpus[0]["clocks.current.sm"] == "345"


def test_nvlink_inactive_links_fail():
    status = parse_nvlink_status(fixture("nvidia_smi_nvlink_s_inactive.txt"))
    assert len(status["GPU 0"]) == 18 and status["GPU 1"][5] == "<inactive>"
    (finding,) = judge_nvlink_status(status, "gpu001", H100)
    assert finding.verdict is Verdict.FAIL and "GPU 1 links 5,11 inactive" in finding.detail


def test_nvlink_all_active_passes_and_cpu_only_skips():
    text = fixture("nvidia_smi_nvlink_s_inactive.txt").replace("<inactive>", "26.562 GB/s")
    assert judge_nvlink_status(parse_nvlink_status(text), "gpu001", H100)[0].verdict is Verdict.PASS
    skipped = judge_nvlink_status(parse_nvlink_status(text), "n", profile("cpu-only"))[0]
    assert skipped.verdict is Verdict.SKIP and skipped.detail == "cpu-only profile"
    assert by_check(judge_query_gpu([], "n", profile("cpu-only")), "gpu.count")[0].detail == "cpu-only profile"


def test_basic_query_fallback_still_judges_count_and_model():
    lines = fixture("nvidia_smi_query_8xh100_healthy.csv").splitlines()
    basic = [",".join(l.split(",")[:5]) for l in lines if not l.startswith("#")]
    findings = judge_query_gpu(parse_query_gpu("\n".join(basic)), "gpu001", H100)
    assert one(findings, "gpu.count").verdict is Verdict.PASS and one(findings, "gpu.model").verdict is Verdict.PASS
    # counters the driver did not report are not claimed healthy
    assert one(findings, "gpu.ecc_errors").verdict is Verdict.SKIP and one(findings, "gpu.clocks").verdict is Verdict.SKIP
