from podsys.checks.findings import Verdict
from podsys.checks.ibstat import judge_ib_counters, judge_ibstat, parse_ib_counters, parse_ibstat
from tests.unit.checks.helpers import fixture, profile

H100 = profile("hgx-h100-8gpu")


def test_healthy_ports_pass_and_ethernet_port_is_not_held_to_ib_rate():
    cas = parse_ibstat(fixture("ibstat_8x_ndr_healthy.txt"))
    assert len(cas) == 9 and cas[-1].ports[0].link_layer == "Ethernet"
    (finding,) = judge_ibstat(cas, "gpu001", H100)
    assert finding.verdict is Verdict.PASS and finding.value == 8


def test_degraded_and_down_ports_each_fail_with_their_cause():
    findings = judge_ibstat(parse_ibstat(fixture("ibstat_8x_ndr_degraded_and_down.txt")), "gpu001", H100)
    assert {f.verdict for f in findings} == {Verdict.FAIL}
    degraded = next(f for f in findings if "mlx5_4/1" in f.detail)
    assert degraded.value == 200 and degraded.threshold == 400 and "cable" in degraded.diagnosis
    down = next(f for f in findings if "mlx5_6/1" in f.detail)
    assert "Polling" in down.detail and "polling" in down.diagnosis


def test_initializing_port_points_at_subnet_manager():
    text = fixture("ibstat_8x_ndr_healthy.txt").replace("State: Active", "State: Initializing", 1)
    findings = judge_ibstat(parse_ibstat(text), "gpu001", H100)
    assert findings[0].verdict is Verdict.FAIL and "subnet manager" in findings[0].diagnosis


def test_fewer_ports_than_profile_fails():
    text = fixture("ibstat_8x_ndr_healthy.txt")
    text = text[: text.index("CA 'mlx5_11'")]
    findings = judge_ibstat(parse_ibstat(text), "gpu001", H100)
    assert any(f.verdict is Verdict.FAIL and "7 InfiniBand ports" in f.detail for f in findings)


def test_counters_warn_on_symbol_errors():
    finding = judge_ib_counters(parse_ib_counters(fixture("ib_counters_symbol_errors.txt")), "gpu001", H100)
    assert finding.verdict is Verdict.WARN and "mlx5_3/1 symbol_error=1843" in finding.detail


def test_cpu_only_skips():
    (finding,) = judge_ibstat(parse_ibstat(fixture("ibstat_8x_ndr_healthy.txt")), "login01", profile("cpu-only"))
    assert finding.verdict is Verdict.SKIP and finding.detail == "cpu-only profile"
