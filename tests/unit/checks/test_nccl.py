import pytest

from podsys.checks.findings import Verdict
from podsys.checks.nccl import judge_nccl, parse_nccl_tests
from tests.unit.checks.helpers import fixture, one, profile

H100 = profile("hgx-h100-8gpu")


def test_single_node_8xh100_nvls_passes_on_largest_size_not_sweep_average():
    run = parse_nccl_tests(fixture("nccl_all_reduce_8xh100_single_node.txt"))
    assert run.collective == "all_reduce"
    assert run.nranks == 8 and not run.multinode
    assert run.largest.size == 16 << 30
    # the sweep average is dragged down by latency-bound small sizes; the verdict must not use it
    assert run.avg_busbw < 200
    finding = one(judge_nccl(run, "gpu001", H100), "nccl.all_reduce")
    assert finding.verdict is Verdict.PASS
    assert finding.value == pytest.approx(479.84, abs=0.01)  # best of out-of-place/in-place at 16 GiB
    assert finding.threshold == pytest.approx(450 * 0.75) and finding.limit == 450
    assert finding.series[-1][0] == 16 << 30 and len(finding.series) == len(run.rows)


def test_ncc_info_lines_between_rows_are_ignored():
    text = fixture("nccl_all_reduce_8xh100_single_node.txt")
    assert "NVLS comm" in text  # an INFO line sits between two result rows
    run = parse_nccl_tests(text)
    assert [r.size for r in run.rows] == [8 << i for i in range(32)]


def test_multinode_healthy_uses_multinode_threshold_and_sees_gdrdma():
    run = parse_nccl_tests(fixture("nccl_all_reduce_2x8xh100_multinode.txt"))
    assert run.multinode and set(run.hosts) == {"gpu001", "gpu002"} and run.nranks == 16
    findings = judge_nccl(run, "gpu[001-002]", H100)
    bw = one(findings, "nccl.multinode.all_reduce")
    assert bw.verdict is Verdict.PASS and bw.threshold == pytest.approx(300) and bw.limit == 400
    transport = one(findings, "nccl.multinode.transport")
    assert transport.verdict is Verdict.PASS and "GDRDMA" in transport.detail


def test_socket_fallback_fails_transport_and_bandwidth():
    run = parse_nccl_tests(fixture("nccl_all_reduce_multinode_socket_fallback.txt"))
    assert run.no_ib_device and run.socket_network and "NET/Socket/0" in run.channels
    findings = judge_nccl(run, "gpu[001-002]", H100)
    transport = one(findings, "nccl.multinode.transport")
    assert transport.verdict is Verdict.FAIL
    assert "TCP sockets" in transport.detail and "ibstat" in transport.diagnosis
    assert one(findings, "nccl.multinode.all_reduce").verdict is Verdict.FAIL


def test_missing_gdrdma_on_ib_profile_fails():
    text = fixture("nccl_all_reduce_2x8xh100_multinode.txt").replace("/GDRDMA", "")
    transport = one(judge_nccl(parse_nccl_tests(text), "pair", H100), "nccl.multinode.transport")
    assert transport.verdict is Verdict.FAIL and "nvidia_peermem" in transport.diagnosis


def test_old_format_error_column_parses_and_small_errors_are_not_wrong():
    run = parse_nccl_tests(fixture("nccl_all_reduce_perf_8xa100_old_error_column.txt"), "nccl_all_reduce_perf_8xa100_old_error_column.txt")
    assert run.wrong_column == "error"
    assert run.collective == "all_reduce"  # from the file name: old versions print no "concluded" line
    assert run.hosts == ["dgx-a100-01"] * 8
    findings = judge_nccl(run, "dgx-a100-01", profile("hgx-a100-8gpu"))
    assert one(findings, "nccl.all_reduce").verdict is Verdict.PASS
    assert one(findings, "nccl.correctness").verdict is Verdict.PASS


def test_old_format_error_over_limit_is_flagged_by_asterisk():
    text = fixture("nccl_all_reduce_perf_8xa100_old_error_column.txt")
    lines = text.splitlines()
    idx = next(i for i, l in enumerate(lines) if l.strip().startswith("1048576 "))
    lines[idx] = lines[idx].rstrip()[:-5] + "2e+00*"
    run = parse_nccl_tests("\n".join(lines), "all_reduce")
    assert one(judge_nccl(run, "n", profile("hgx-a100-8gpu")), "nccl.correctness").verdict is Verdict.FAIL


def test_new_format_wrong_count_fails_correctness():
    lines = fixture("nccl_all_gather_8xh100_low.txt").splitlines()
    idx = next(i for i, l in enumerate(lines) if l.strip().startswith("4194304 "))
    cols = lines[idx].split()
    cols[8] = "17"
    lines[idx] = "  ".join(cols)
    finding = one(judge_nccl(parse_nccl_tests("\n".join(lines)), "n", H100), "nccl.correctness")
    assert finding.verdict is Verdict.FAIL and "4 MiB" in finding.detail


def test_all_gather_low_busbw_fails_with_its_own_threshold():
    run = parse_nccl_tests(fixture("nccl_all_gather_8xh100_low.txt"))
    assert run.collective == "all_gather"
    finding = one(judge_nccl(run, "gpu003", H100), "nccl.all_gather")
    assert finding.verdict is Verdict.FAIL
    assert finding.threshold == pytest.approx(450 * 0.7)
    assert "NVLink" in finding.diagnosis


def test_shared_memory_instead_of_p2p_on_nvswitch_board_fails():
    text = fixture("nccl_all_reduce_8xh100_single_node.txt").replace("via P2P/CUMEM/read", "via SHM/direct/direct")
    finding = one(judge_nccl(parse_nccl_tests(text), "gpu001", H100), "nccl.transport")
    assert finding.verdict is Verdict.FAIL and "ACS" in finding.diagnosis


def test_cuda_802_points_at_fabric_manager():
    run = parse_nccl_tests(fixture("nccl_cuda_802.txt"))
    assert run.cuda_not_ready and not run.rows
    (finding,) = judge_nccl(run, "gpu004", H100)
    assert finding.verdict is Verdict.FAIL and "fabric manager" in finding.diagnosis


def test_mpirun_tag_output_prefixes_are_stripped():
    rows = [l for l in fixture("nccl_all_reduce_2x8xh100_multinode.txt").splitlines() if l.strip()[:1].isdigit()]
    tagged = "\n".join(f"[1,0]<stdout>:{l}" for l in rows)
    assert len(parse_nccl_tests(tagged, "all_reduce").rows) == len(rows)


def test_cpu_only_profile_skips():
    run = parse_nccl_tests(fixture("nccl_all_reduce_8xh100_single_node.txt"))
    (finding,) = judge_nccl(run, "node1", profile("cpu-only"))
    assert finding.verdict is Verdict.SKIP and finding.detail == "cpu-only profile"


def test_without_profile_values_are_reported_but_not_judged():
    finding = one(judge_nccl(parse_nccl_tests(fixture("nccl_all_reduce_8xh100_single_node.txt")), "n", None), "nccl.all_reduce")
    assert finding.verdict is Verdict.SKIP and finding.value == pytest.approx(479.84, abs=0.01) and "--profile" in finding.detail


def test_text_without_rows_is_rejected():
    with pytest.raises(ValueError, match="no nccl-tests result rows"):
        parse_nccl_tests("# just a comment\nNCCL INFO something\n")


# --- NCCL_DEBUG=INFO logs without a result table (a training job's log) --------------------

def test_info_log_socket_fallback_on_ib_cluster_fails_naming_the_host():
    run = parse_nccl_tests(fixture("nccl_info_only_socket_on_ib_cluster.log"))
    assert run.rows == [] and run.nranks == 4 and run.hosts == ["gpu001", "gpu001", "gpu002", "gpu002"] and run.multinode
    findings = judge_nccl(run, "job-1234", profile("hgx-h100-8gpu"))
    transport = one(findings, "nccl.multinode.transport")
    assert transport.verdict is Verdict.FAIL and "gpu002" in transport.detail and "gpu001" not in transport.detail
    assert one(findings, "nccl.multinode.busbw").verdict is Verdict.SKIP


def test_info_log_ib_with_gdrdma_is_healthy():
    run = parse_nccl_tests(fixture("nccl_info_only_ib_gdrdma.log"))
    assert run.rows == [] and run.nranks == 4 and run.multinode
    transport = one(judge_nccl(run, "job-1235", profile("hgx-h100-8gpu")), "nccl.multinode.transport")
    assert transport.verdict is Verdict.PASS and "GDRDMA" in transport.detail


def test_info_log_ib_without_gdrdma_fails():
    text = fixture("nccl_info_only_ib_gdrdma.log").replace("/GDRDMA", "")
    transport = one(judge_nccl(parse_nccl_tests(text), "job", profile("hgx-h100-8gpu")), "nccl.multinode.transport")
    assert transport.verdict is Verdict.FAIL and "nvidia_peermem" in transport.diagnosis


def test_rank_count_comes_from_init_lines_when_the_header_is_missing():
    text = fixture("nccl_all_reduce_2x8xh100_multinode.txt")
    headerless = "\n".join(line for line in text.splitlines() if "#  Rank" not in line and "# Rank" not in line)
    lines = [f"gpu00{1 + r // 8}:{900 + r}:{950 + r} [{r % 8}] NCCL INFO comm 0x55 rank {r} nranks 16 cudaDev {r % 8} nvmlDev {r % 8} "
             "busId 18000 commId 0x1 - Init COMPLETE" for r in range(16)]
    run = parse_nccl_tests("\n".join(lines) + "\n" + headerless)
    assert run.nranks == 16 and run.multinode and len(set(run.hosts)) == 2


def test_old_ring_lines_count_as_channels():
    text = ("ip-172-31-0-119:45328:45333 [0] NCCL INFO Ring 00 : 35 -> 34 [send] via NET/Socket/0\n"
            "ip-172-31-7-247:45553:45558 [0] NCCL INFO comm 0x7efe60002250 rank 15 nranks 64 cudaDev 0 nvmlDev 0 - Init COMPLETE\n")
    run = parse_nccl_tests(text)
    assert run.channels == ["NET/Socket/0"] and run.nranks == 64
    transport = one(judge_nccl(run, "job", None), "nccl.multinode.transport")
    assert transport.verdict is Verdict.FAIL and "ip-172-31-0-119" in transport.detail


def test_socket_on_a_profile_without_infiniband_is_expected():
    text = fixture("nccl_info_only_socket_on_ib_cluster.log")
    spec = profile("hgx-h100-8gpu")
    no_ib = spec.model_copy(update={"hca": None}) if hasattr(spec, "model_copy") else spec
    if no_ib.has_ib:
        pytest.skip("profile model cannot drop its HCA here")
    transport = one(judge_nccl(parse_nccl_tests(text), "job", no_ib), "nccl.multinode.transport")
    assert transport.verdict is Verdict.PASS
