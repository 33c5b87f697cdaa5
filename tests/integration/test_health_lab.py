"""Continuous health on a real lab cluster: base, Slurm and monitoring deployed, node01 given the
hgx-h100-8gpu profile and shims replaying captured GPU/IB tool outputs (`podsys lab fault`).
For each fault kind in turn: Slurm drains node01 with reason `podsys:<fault>`, the alert fires
in Prometheus and reaches a test webhook receiver, a `--requeue` job running on node01 lands on
a healthy node; cleared, node01 is resumed and the alert resolves. An admin's own drain on
another node is never touched.

Slow (a deploy, then about two minutes per fault): PODSYS_HEALTH_FAULTS=xid79,fm-stopped runs a
subset."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import hostlist
import pytest
import yaml

from podsys.lab import fault

pytestmark = [pytest.mark.integration, pytest.mark.lab]

GPU_NODE = "node01"
INTERVAL = 30  # seconds: the schema's minimum, HealthCheckInterval
WAIT = 240  # bound for each thing to happen: a health run, a scrape, a rule evaluation, a webhook
WEBHOOK_PORT = 8099
FAULTS = [k for k in os.environ.get("PODSYS_HEALTH_FAULTS", ",".join(fault.FAULT_KINDS)).split(",") if k]
# Each fault takes about 4 minutes (drain, alert, webhook, requeue, then resume and resolve): the
# default CI run injects the first (xid79) to keep .ci/run under an hour; `-m slow` runs the rest.
CI_FAULTS = 1
EXPECTED_CODE = {k: k for k in fault.FAULT_KINDS}


def podsys(*args, timeout=3600):
    return subprocess.run([sys.executable, "-m", "podsys.cli.main", *args], capture_output=True, text=True, timeout=timeout)


def wait_for(what, probe, timeout=WAIT, step=5):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(step)
    raise AssertionError(f"{what}: not within {timeout} s (last seen: {last!r})")


def node_state(lab, node):
    out = lab.ssh(lab.head, f"scontrol show node {node}").stdout
    state = next((w.split("=", 1)[1] for w in out.split() if w.startswith("State=")), "")
    reason = next((line.strip()[len("Reason="):] for line in out.splitlines() if line.strip().startswith("Reason=")), "")
    return state, reason


def firing(lab, fault_code):
    # the head has no curl: python3's urllib
    url = f"http://{lab.addresses[lab.head]}:9090/api/v1/alerts"
    out = lab.ssh(lab.head, f"python3 -c 'import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1]).read().decode())' {url}").stdout
    alerts = json.loads(out)["data"]["alerts"]
    return [a for a in alerts if a["labels"].get("fault") == fault_code and a["labels"].get("node") == GPU_NODE and a["state"] == "firing"]


def webhook_posts(lab):
    out = lab.ssh(lab.head, "cat /tmp/podsys-webhook.jsonl 2>/dev/null || true").stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def webhook_saw(lab, fault_code, status):
    return [p for p in webhook_posts(lab) for a in p.get("alerts", [])
            if a["labels"].get("fault") == fault_code and a["labels"].get("node") == GPU_NODE and a["status"] == status]


WEBHOOK_SERVER = f"""
import http.server, json
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers['Content-Length']))
        with open('/tmp/podsys-webhook.jsonl', 'a') as f:
            f.write(json.dumps(json.loads(body)) + '\\n')
        self.send_response(200); self.end_headers()
    def log_message(self, *a): pass
http.server.HTTPServer(('0.0.0.0', {WEBHOOK_PORT}), H).serve_forever()
"""


@pytest.fixture(scope="module")
def health_lab(fresh_lab_cluster):
    lab = fresh_lab_cluster
    assert lab.nodes[0] == GPU_NODE, lab.nodes
    started = time.monotonic()
    manifest = yaml.safe_load(lab.manifest.read_text())
    (group,) = manifest["node_groups"]
    others = [n for n in lab.nodes if n != GPU_NODE]
    gpu_group = {**group, "name": "gpu", "hosts": GPU_NODE, "hardware": "hgx-h100-8gpu",
                 "start_address": lab.addresses[GPU_NODE], "nodes": {GPU_NODE: group["nodes"][GPU_NODE]}}
    cpu_group = {**group, "hosts": hostlist.collect_hostlist(others), "start_address": lab.addresses[others[0]],
                 "nodes": {n: group["nodes"][n] for n in others}}
    manifest["node_groups"] = [gpu_group, cpu_group]
    manifest["slurm"]["partitions"][0]["node_groups"] = ["gpu", cpu_group["name"]]
    manifest["health"] = {"interval": INTERVAL,
                          "alert_receiver": {"webhook_url": f"http://{lab.addresses[lab.head]}:{WEBHOOK_PORT}/alerts"}}
    lab.manifest.write_text(yaml.safe_dump(manifest, sort_keys=False))
    # the test receiver, on the head where Alertmanager runs
    lab.ssh(lab.head, f"cat > /tmp/podsys-webhook.py <<'PODSYS_EOF'\n{WEBHOOK_SERVER}\nPODSYS_EOF")
    lab.ssh(lab.head, "setsid nohup python3 /tmp/podsys-webhook.py >/tmp/podsys-webhook.log 2>&1 < /dev/null &")
    wait_for("test webhook receiver listening", lambda: f":{WEBHOOK_PORT}" in lab.ssh(lab.head, "ss -ltn").stdout, timeout=30, step=1)
    # healthy GPU shims (and /dev/nvidia placeholders for gres.conf) before slurmd starts
    done = podsys("lab", "fault", GPU_NODE, "--dir", str(lab.directory))
    assert done.returncode == 0, done.stderr
    deploy = podsys("deploy", str(lab.manifest), timeout=5400)
    assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-3000:]
    print(f"\nhealth lab ready in {time.monotonic() - started:.0f} s")
    yield lab


def test_healthy_gpu_node_passes_every_passive_check(health_lab):
    lab = health_lab
    out = lab.ssh(GPU_NODE, "/usr/local/sbin/podsys-health --json").stdout
    data = json.loads(out)
    assert data["verdict"] == "PASS", out
    assert {f["check"] for f in data["findings"]} >= {"gpu.count", "gpu.xid", "gpu.fabric_manager", "gpu.gpudirect", "infiniband.ports",
                                                      "gpu.ecc_errors", "gpu.nvlink", "gpu.pcie_link", "gpu.clocks", "node.disk", "node.memory"}
    assert data["seconds"] < 5
    cpu = json.loads(lab.ssh(lab.nodes[1], "/usr/local/sbin/podsys-health --json").stdout)
    assert {f["check"] for f in cpu["findings"]} == {"node.disk", "node.memory"} and cpu["seconds"] < 1
    assert "HealthCheckProgram=/usr/local/sbin/podsys-health-slurm" in lab.ssh(lab.head, "cat /etc/slurm/slurm.conf").stdout


def test_an_admin_drain_is_never_touched(health_lab):
    lab = health_lab
    admin = lab.nodes[-1]
    lab.ssh(lab.head, f"scontrol update nodename={admin} state=drain reason='RMA ticket 4711'")
    try:
        time.sleep(2 * INTERVAL + 10)  # two health runs on a healthy node
        state, reason = node_state(lab, admin)
        assert "DRAIN" in state and reason.startswith("RMA ticket 4711"), (state, reason)
    finally:
        lab.ssh(lab.head, f"scontrol update nodename={admin} state=resume")


@pytest.mark.parametrize("kind", [k if i < CI_FAULTS else pytest.param(k, marks=pytest.mark.slow)
                                  for i, k in enumerate(FAULTS)])
def test_fault_drains_alerts_requeues_then_clears(health_lab, kind):
    lab = health_lab
    code = EXPECTED_CODE[kind]
    others = [n for n in lab.nodes if n != GPU_NODE]
    # hold the other nodes so the job starts on node01, then let them take it after the drain
    lab.ssh(lab.head, f"scontrol update nodename={','.join(others)} state=drain reason='test hold'")
    job = lab.ssh(lab.head, "sbatch --parsable --requeue -N1 --wrap 'sleep 3600'").stdout.strip()
    try:
        wait_for("job running on node01", lambda: lab.ssh(lab.head, f"squeue -h -j {job} -o '%T %N'").stdout.strip() == f"RUNNING {GPU_NODE}")
        lab.ssh(lab.head, f"scontrol update nodename={','.join(others)} state=resume")
        started = time.monotonic()
        done = podsys("lab", "fault", GPU_NODE, kind, "--dir", str(lab.directory))
        assert done.returncode == 0, done.stderr

        def drained():
            state, reason = node_state(lab, GPU_NODE)
            return (state, reason) if "DRAIN" in state and reason.startswith(f"podsys:{code}") else None

        def requeued():
            status = lab.ssh(lab.head, f"squeue -h -j {job} -o '%T %N'").stdout.split()
            return status if len(status) == 2 and status[0] == "RUNNING" and status[1] in others else None

        state, reason = wait_for("drain with the fault's reason", drained)
        drained_after = time.monotonic() - started
        wait_for("alert firing in Prometheus", lambda: firing(lab, code))
        wait_for("alert at the webhook receiver", lambda: webhook_saw(lab, code, "firing"))
        moved = wait_for("job requeued onto a healthy node", requeued, timeout=2 * WAIT)
        print(f"\n{kind}: drained after {drained_after:.0f} s ({reason}); job {job} now on {moved[1]}")

        done = podsys("lab", "fault", GPU_NODE, "--dir", str(lab.directory))  # the repair: healthy shims again
        assert done.returncode == 0, done.stderr
        lab.ssh(GPU_NODE, "/usr/local/sbin/podsys-health --clear-xid >/dev/null || true")
        wait_for("node01 resumed", lambda: "DRAIN" not in node_state(lab, GPU_NODE)[0])
        wait_for("alert resolved at the webhook receiver", lambda: webhook_saw(lab, code, "resolved"))
        assert not firing(lab, code)
    finally:
        lab.ssh(lab.head, f"scancel {job}", check=False)
        lab.ssh(lab.head, f"scontrol update nodename={','.join(others)} state=resume", check=False)
