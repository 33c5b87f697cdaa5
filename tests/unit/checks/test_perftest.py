import pytest

from podsys.checks.findings import Verdict
from podsys.checks.perftest import judge_perftest, parse_perftest
from tests.unit.checks.helpers import fixture, profile

H100 = profile("hgx-h100-8gpu")


def test_gbits_report_passes():
    run = parse_perftest(fixture("ib_write_bw_ndr_gbits.txt"))
    assert run.unit == "Gb/sec" and run.device == "mlx5_0" and run.link_type == "IB"
    (finding,) = judge_perftest(run, "gpu002->gpu001 mlx5_0", H100)
    assert finding.verdict is Verdict.PASS and finding.value == pytest.approx(391.03)
    assert finding.threshold == pytest.approx(380) and finding.unit == "Gb/s"


def test_mib_sweep_judged_at_largest_size_and_converted():
    run = parse_perftest(fixture("ib_write_bw_mib_sweep.txt"))
    assert run.unit == "MiB/sec" and len(run.rows) == 23 and run.largest.size == 8388608
    (finding,) = judge_perftest(run, "pair", H100)
    assert finding.value == pytest.approx(46544.17 * 8 * 2**20 / 1e9, rel=1e-4)
    assert finding.verdict is Verdict.PASS


def test_old_mb_unit_degraded_port_fails():
    run = parse_perftest(fixture("ib_write_bw_mb_old_degraded.txt"))
    assert run.unit == "MB/sec" and run.device == "mlx5_5"
    (finding,) = judge_perftest(run, "pair", H100)
    assert finding.verdict is Verdict.FAIL and finding.value == pytest.approx(192.83, abs=0.01)
    assert "ibstat" in finding.diagnosis


def test_units_agree_for_the_same_bandwidth():
    gbits = parse_perftest(fixture("ib_write_bw_ndr_gbits.txt"))
    text = fixture("ib_write_bw_ndr_gbits.txt").replace("[Gb/sec]", "[MiB/sec]").replace("391.03", f"{391.03e9 / 8 / 2**20:.2f}")
    mib = parse_perftest(text)
    assert mib.gbits(mib.largest.bw_average) == pytest.approx(gbits.gbits(gbits.largest.bw_average), rel=1e-4)


def test_bidirectional_doubles_the_threshold():
    text = fixture("ib_write_bw_ndr_gbits.txt").replace("RDMA_Write BW Test", "RDMA_Write Bidirectional BW Test")
    (finding,) = judge_perftest(parse_perftest(text), "pair", H100)
    assert finding.threshold == pytest.approx(760) and finding.verdict is Verdict.FAIL


def test_gpudirect_registration_failure_names_peermem():
    run = parse_perftest(fixture("ib_write_bw_gpudirect_mr_failure.txt"))
    assert run.mr_failure and run.gpudirect
    (finding,) = judge_perftest(run, "pair", H100)
    assert finding.verdict is Verdict.FAIL and "nvidia_peermem" in finding.diagnosis


def test_cpu_only_skips_and_garbage_is_rejected():
    (finding,) = judge_perftest(parse_perftest(fixture("ib_write_bw_ndr_gbits.txt")), "pair", profile("cpu-only"))
    assert finding.verdict is Verdict.SKIP and finding.detail == "cpu-only profile"
    with pytest.raises(ValueError):
        parse_perftest("hello\nworld\n")
