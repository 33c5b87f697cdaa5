"""The monitoring role's health additions, rendered with Jinja2 as Ansible would: one alert rule
per fault class in the catalogue, and Alertmanager's receiver from the manifest."""

from pathlib import Path

import jinja2
import pytest
import yaml

from podsys.checks.catalog import fault_code, passive_checks
from tests.conftest import REPO_ROOT

TEMPLATES = REPO_ROOT / "podsys" / "playbooks" / "roles" / "monitoring" / "templates"


def render(name, **variables):
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), undefined=jinja2.StrictUndefined, trim_blocks=True)
    base = {"ansible_managed": "managed", "podsys_head": {"address": "10.0.0.1", "hostname": "head"},
            "podsys_cluster": {"name": "lab", "domain": "lab.example"}, "monitoring_scrape_interval": "15s",
            "podsys_nodes": [], "monitoring_prometheus_port": 9090}
    return env.get_template(name).render(**{**base, **variables})


def test_one_alert_per_fault_class_of_the_passive_checks():
    rules = yaml.safe_load(render("health.rules.yml.j2", podsys_health={"interval": 120}))["groups"][0]["rules"]
    faults = {r["labels"]["fault"] for r in rules}
    expected = {s.fault for s in passive_checks()} | {fault_code("gpu.xid", 1, "Xid 79"), fault_code("infiniband.ports", 200.0, "degraded")}
    assert faults == expected | {"health-stale"}
    for rule in rules:
        code = rule["labels"]["fault"]
        if code != "health-stale":
            assert rule["expr"] == f'podsys_health_check_ok{{fault="{code}"}} == 0'
    stale = next(r for r in rules if r["alert"] == "PodsysHealthStale")
    assert "3 * 120" in stale["expr"]
    assert len({r["alert"] for r in rules}) == len(rules)


@pytest.mark.parametrize("receiver, key", [
    ({"webhook_url": "http://10.0.0.1:8099/alerts", "email": None, "smarthost": None}, "webhook_configs"),
    ({"webhook_url": None, "email": "ops@example.org", "smarthost": "mail.example.org:25"}, "email_configs"),
    (None, None),
])
def test_alertmanager_receiver_from_the_manifest(receiver, key):
    config = yaml.safe_load(render("alertmanager.yml.j2", podsys_health={"alert_receiver": receiver}))
    (entry,) = config["receivers"]
    assert config["route"]["receiver"] == entry["name"] == "podsys"
    if key is None:
        assert set(entry) == {"name"}  # alerts visible in Alertmanager, sent nowhere
    else:
        assert entry[key][0]["send_resolved"] is True
    if key == "email_configs":
        assert config["global"]["smtp_smarthost"] == "mail.example.org:25"


def test_prometheus_sends_alerts_to_alertmanager_only_with_health_on():
    on = yaml.safe_load(render("prometheus.yml.j2", podsys_health={"enabled": True}))
    off = yaml.safe_load(render("prometheus.yml.j2", podsys_health={"enabled": False}))
    assert on["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["10.0.0.1:9093"]
    assert "alerting" not in off
