import json

import pytest
import re
from io import StringIO

from rich.console import Console

from podsys.checks.findings import Finding, Verdict, finding, skip
from podsys.checks.report import bars_svg, busbw_svg, exit_code, heatmap_svg, load_report, plots, print_report, render_html, report_data, summary, write_report
from tests.report_samples import sample_findings


def test_summary_and_exit_code():
    findings = sample_findings()
    counts = summary(findings)
    assert counts["FAIL"] > 0 and counts["PASS"] > 0
    assert exit_code(findings) == 1
    assert exit_code([f for f in findings if f.verdict is not Verdict.FAIL]) == 0
    assert exit_code([skip("n", "gpu.count", "cpu-only profile")]) == 0


def test_terminal_tables_per_area_with_failures_first():
    out = StringIO()
    print_report(sample_findings(), Console(file=out, width=220, color_system=None))
    text = out.getvalue()
    titles = re.findall(r"^(\w+) \(", text, flags=re.M)
    assert titles[0] in ("gpu", "infiniband", "nccl") and set(titles) == {"gpu", "infiniband", "nccl", "bandwidth", "monitoring"}
    assert titles[-1] == "bandwidth"  # the only area without a failure comes last
    gpu_rows = [l for l in text.splitlines() if "│ gpu0" in l and ("FAIL" in l or "PASS" in l)]
    first_pass = next(i for i, l in enumerate(gpu_rows) if "PASS" in l)
    assert all("FAIL" in l for l in gpu_rows[:first_pass])
    # data is printed literally: PCI ids must not turn into emoji, hostlists not into markup
    assert "00000000:5D:00.0" in text and "gpu[001-002]" in text


def test_json_has_every_field_and_round_trips(tmp_path):
    findings = sample_findings()
    paths = write_report(findings, tmp_path, {"cluster": "pod01"})
    data = json.loads(paths["json"].read_text())
    assert data["cluster"] == "pod01" and data["exit_code"] == 1
    first = data["findings"][0]
    assert first["verdict"] == "FAIL"
    for key in ("node", "check", "area", "verdict", "value", "unit", "threshold", "limit", "source", "detail", "diagnosis"):
        assert key in first
    assert all(f["diagnosis"] for f in data["findings"] if f["verdict"] == "FAIL")
    assert sorted(load_report(paths["json"]), key=repr) == sorted(findings, key=repr)


def test_html_is_self_contained_and_has_plots(tmp_path):
    html = render_html(sample_findings(), {"cluster": "pod01", "generated": "2026-01-01T00:00:00Z"})
    # nothing to fetch: no scripts, stylesheets, images or fonts from anywhere
    assert not re.search(r"<script|<link|<img|@import|url\(|src=", html, flags=re.I)
    assert set(re.findall(r"https?://[^\"' ]+", html)) <= {"http://www.w3.org/2000/svg"}
    assert html.count('class="heatmap"') == 1
    assert 'class="plot busbw"' in html and 'class="plot bars"' in html
    assert 'data-threshold="337.5"' in html  # all_reduce threshold line = 450 x 0.75
    assert 'data-threshold="380"' in html  # ib_write_bw threshold line
    assert html.index('data-verdict="FAIL"') < html.rindex('data-verdict="PASS"')


def test_heatmap_cell_is_worst_verdict():
    fs = [finding("n1", "gpu.count", Verdict.PASS), finding("n1", "gpu.nvlink", Verdict.FAIL), finding("n2", "gpu.count", Verdict.PASS)]
    svg = heatmap_svg(fs)
    assert svg.count('data-verdict="FAIL"') == 1 and svg.count('data-verdict="PASS"') == 1
    assert svg.index(">n1<") < svg.index(">n2<")  # failing node listed first


def test_busbw_plot_scales_points_inside_the_frame():
    f = Finding("n", "nccl.all_reduce", "nccl", Verdict.PASS, value=480, threshold=337.5, limit=450,
                series=((8.0, 0.1), (1024.0, 5.0), (2**34, 480.0)))
    svg = busbw_svg("t", [f])
    coords = [tuple(map(float, p.split(","))) for p in re.search(r'points="([^"]+)"', svg).group(1).split()]
    assert coords[0][0] < coords[1][0] < coords[2][0]  # log x axis, increasing
    assert coords[2][1] < coords[0][1]  # higher busbw drawn higher
    assert all(60 <= x <= 480 and 30 <= y <= 275 for x, y in coords)


def test_bars_and_plot_selection():
    fs = sample_findings()
    titles = [t for t, _ in plots(fs)]
    assert titles == ["nccl.all_gather: busbw vs message size", "nccl.all_reduce: busbw vs message size",
                      "nccl.multinode.all_reduce: busbw vs message size", "ib_write_bw per node pair",
                      "gpu001 device_to_device_memcpy_write_ce: per GPU", "gpu001 device_to_host_memcpy_ce: per GPU",
                      "gpu001 host_to_device_memcpy_ce: per GPU", "podsys health per node"]
    ib = [f for f in fs if f.check == "infiniband.ib_write_bw"]
    svg = bars_svg("ib", ib, "Gb/s")
    assert svg.count("<rect") == len(ib) and 'data-verdict="FAIL"' in svg


def test_report_data_orders_failures_first():
    data = report_data(sample_findings(), {"generated": "x"})
    verdicts = [f["verdict"] for f in data["findings"]]
    assert verdicts == sorted(verdicts, key=lambda v: Verdict(v).rank)


def test_report_json_matches_its_schema(tmp_path):
    import jsonschema
    from importlib import resources

    schema = json.loads((resources.files("podsys") / "data" / "check-report.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    paths = write_report(sample_findings() + [skip("node1", "nccl.all_reduce", "cpu-only profile")], tmp_path, {"cluster": "pod01"})
    jsonschema.validate(json.loads(paths["json"].read_text()), schema)
    broken = json.loads(paths["json"].read_text())
    broken["findings"][0]["diagnosis"] = ""  # a FAIL without a diagnosis breaks the contract
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def test_heatmap_cell_skips_only_when_nothing_was_judged():
    fs = [finding("n1", "versions.os", Verdict.PASS), finding("n1", "versions.driver", Verdict.SKIP, detail="cpu-only profile"),
          finding("n2", "versions.driver", Verdict.SKIP, detail="cpu-only profile")]
    svg = heatmap_svg(fs)
    assert svg.count('data-verdict="PASS"') == 1 and svg.count('data-verdict="SKIP"') == 1


def test_report_json_carries_the_catalogue_tier_and_fault_code():
    from podsys.checks.findings import failed, passed
    from podsys.checks.report import load_report, report_data

    findings = [failed("gpu001", "infiniband.ports", value=200.0, detail="mlx5_0/1: Active but degraded, Rate 200 < 400 Gb/s", diagnosis="x"),
                passed("gpu001", "gpu.count", detail="8 GPUs")]
    data = {f["check"]: f for f in report_data(findings)["findings"]}
    assert data["infiniband.ports"]["fault"] == "ib-rate-degraded" and data["infiniband.ports"]["tier"] == "prolog"
    assert data["gpu.count"]["fault"] == "gpu-missing"


def test_report_with_catalogue_fields_loads_back(tmp_path):
    import json

    from podsys.checks.findings import passed
    from podsys.checks.report import load_report, report_data

    path = tmp_path / "report.json"
    path.write_text(json.dumps(report_data([passed("n", "gpu.count", detail="8 GPUs")])))
    assert [f.check for f in load_report(path)] == ["gpu.count"]


def test_per_gpu_bars_and_health_timeline_are_drawn():
    import re

    from podsys.checks.report import plots
    from tests.report_samples import sample_findings

    drawn = dict(plots(sample_findings()))
    gpu = drawn["gpu001 host_to_device_memcpy_ce: per GPU"]
    assert gpu.count('class="axis">GPU ') == 8 and 'class="threshold"' in gpu
    timeline = drawn["podsys health per node"]
    assert [n for n in ("gpu001", "gpu002", "gpu003") if f">{n}</text>" in timeline] == ["gpu001", "gpu002", "gpu003"]
    # gpu001 failed for two samples and recovered; gpu002 never failed
    gpu001 = re.findall(r'<rect[^>]*data-verdict="(\w+)"><title>gpu001', timeline)
    gpu002 = re.findall(r'<rect[^>]*data-verdict="(\w+)"><title>gpu002', timeline)
    assert gpu001 == ["PASS", "PASS", "FAIL", "FAIL", "PASS", "PASS"] and set(gpu002) == {"PASS"}


def test_health_timeline_verdicts():
    from podsys.checks.monitoring import judge_health_timeline, parse_health_range
    from tests.unit.checks.helpers import fixture

    verdicts = {f.node: f.verdict.value for f in judge_health_timeline(parse_health_range(fixture("prometheus_health_range.json")))}
    assert verdicts == {"gpu001": "WARN", "gpu002": "PASS", "gpu003": "FAIL"}


def test_per_gpu_values_of_a_p2p_matrix_are_each_gpus_slowest_peer():
    from podsys.checks.nvbandwidth import BandwidthMatrix, per_gpu

    matrix = BandwidthMatrix("device_to_device_memcpy_write_ce", "memcpy CE GPU(row) <- GPU(column) bandwidth (GB/s)",
                             {(0, 1): 390.0, (0, 2): 120.0, (1, 0): 389.0, (1, 2): 388.0}, None)
    assert per_gpu(matrix) == ((0.0, 120.0), (1.0, 388.0))
