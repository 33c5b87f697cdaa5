import json

import pytest

from podsys.checks.findings import Verdict
from podsys.checks.monitoring import judge_targets, parse_targets
from tests.unit.checks.helpers import fixture

NODES = {"node01": ["node01", "10.77.0.11"], "node02": ["node02", "10.77.0.12"], "node03": ["node03", "10.77.0.13"]}


def test_target_down_names_the_node_with_the_scrape_error():
    findings = judge_targets(parse_targets(fixture("prometheus_targets_one_down.json")), NODES, {"head": ["head", "localhost"]})
    by_node = {f.node: f for f in findings}
    assert by_node["node02"].verdict is Verdict.FAIL and "connection refused" in by_node["node02"].detail
    assert by_node["node01"].verdict is Verdict.PASS and by_node["node03"].verdict is Verdict.PASS
    assert by_node["head"].verdict is Verdict.PASS  # localhost:9090 is the head's own Prometheus


def test_node_without_target_fails_and_relabelled_instances_match():
    targets = [{"labels": {"instance": "node01", "job": "node", "node": "node01"}, "health": "up"}]
    findings = judge_targets(targets, NODES)
    assert {f.node: f.verdict for f in findings} == {"node01": Verdict.PASS, "node02": Verdict.FAIL, "node03": Verdict.FAIL}
    assert "no Prometheus scrape target" in findings[1].detail


def test_api_errors():
    with pytest.raises(ValueError, match="invalid JSON"):
        parse_targets("<html>502</html>")
    with pytest.raises(ValueError, match="status error"):
        parse_targets(json.dumps({"status": "error", "error": "x"}))
