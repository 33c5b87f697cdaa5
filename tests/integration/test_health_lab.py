"""Continuous health on a real lab cluster: base, Slurm and monitoring deployed, node01 given the
hgx-h100-8gpu profile and shims replaying captured GPU/IB tool outputs (`podsys lab fault`).
For each fault kind in turn: Slurm drains node01 with reason `podsys:<fault>`, the alert fires
in Prometheus and reaches a test webhook receiver, a `--requeue` job running on node01 lands on
a healthy node; cleared, node01 is resumed and the alert resolves. An admin's own drain on
another node is never touched.

The same lab, no second deploy, also proves: Alertmanager's email receiver (a small SMTP server
on the head, stdlib socketserver) gets the fault's mail naming the node and the fault code; the
prolog gate runs only the prolog tier and keeps a job off node01 once a prolog-tier fault is
injected; `podsys check --via-slurm` runs the heavy checks as Slurm jobs in a reservation on
node01 when it is idle (the dcgmi shim's replayed output judged PASS, then a replayed failing
run judged FAIL), and leaves it alone while a job holds it.

Slow (a deploy, then about two minutes per fault): PODSYS_HEALTH_FAULTS=xid79,fm-stopped runs a
subset."""

from __future__ import annotations

import email
import email.policy
import json
import os
import shlex
import time

import hostlist
import pytest
import yaml

from podsys.checks.catalog import checks_for_tier
from podsys.lab import fault
from tests.conftest import REPO_ROOT, podsys
from tests.integration.conftest import wait_for as shared_wait_for

pytestmark = [pytest.mark.integration, pytest.mark.lab]

GPU_NODE = "node01"
INTERVAL = 30  # seconds: the schema's minimum, HealthCheckInterval
WAIT = 240  # bound for each thing to happen: a health run, a scrape, a rule evaluation, a webhook
WEBHOOK_PORT = 8099
SMTP_PORT = 2525
MAIL_DIR = "/tmp/podsys-mail"
FAULTS = [k for k in os.environ.get("PODSYS_HEALTH_FAULTS", ",".join(fault.FAULT_KINDS)).split(",") if k]
# Each fault takes about 4 minutes (drain, alert, webhook, requeue, then resume and resolve): the
# default CI run injects the first (xid79) to keep .ci/run under an hour; `-m slow` runs the rest.
CI_FAULTS = 1
EXPECTED_CODE = {k: k for k in fault.FAULT_KINDS}


def wait_for(what, probe, timeout=WAIT, step=5):
    return shared_wait_for(what, probe, timeout=timeout, every=step)


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


# A test SMTP receiver: enough of RFC 5321 for Alertmanager's Go net/smtp client (EHLO, MAIL,
# RCPT, DATA with dot-stuffing, QUIT; no STARTTLS offered, so smtp_require_tls: false applies).
# Each message is saved as it arrived, one .eml file per DATA.
SMTP_SERVER = f"""
import os, socketserver, time
os.makedirs({MAIL_DIR!r}, exist_ok=True)
class H(socketserver.StreamRequestHandler):
    def handle(self):
        w = lambda s: (self.wfile.write((s + '\\r\\n').encode()), self.wfile.flush())
        w('220 podsys-test-smtp ESMTP')
        data = None
        while True:
            raw = self.rfile.readline()
            if not raw:
                return
            line = raw.decode('utf-8', 'replace')
            if data is not None:
                if line.rstrip('\\r\\n') == '.':
                    name = os.path.join({MAIL_DIR!r}, f'{{time.time_ns()}}.eml')
                    with open(name + '.tmp', 'w') as f:
                        f.write(''.join(data))
                    os.rename(name + '.tmp', name)
                    data = None
                    w('250 OK queued')
                else:
                    data.append(line[1:] if line.startswith('..') else line)
                continue
            cmd = line.strip().upper()
            if cmd.startswith('EHLO'):
                w('250-podsys-test-smtp'); w('250 8BITMIME')
            elif cmd.startswith('HELO'):
                w('250 podsys-test-smtp')
            elif cmd.startswith(('MAIL', 'RCPT', 'RSET', 'NOOP')):
                w('250 OK')
            elif cmd == 'DATA':
                data = []
                w('354 end with <CR><LF>.<CR><LF>')
            elif cmd == 'QUIT':
                w('221 bye')
                return
            else:
                w('502 not implemented')
socketserver.ThreadingTCPServer.allow_reuse_address = True
socketserver.ThreadingTCPServer(('0.0.0.0', {SMTP_PORT}), H).serve_forever()
"""


def mails(lab):
    """(subject, text) of every mail the test SMTP server received."""
    names = lab.ssh(lab.head, f"ls {MAIL_DIR}/*.eml 2>/dev/null || true").stdout.split()
    out = []
    for name in names:
        msg = email.message_from_string(lab.ssh(lab.head, f"cat {name}").stdout, policy=email.policy.default)
        body = msg.get_body(("plain", "html"))
        out.append((str(msg["Subject"]), body.get_content() if body is not None else ""))
    return out


def mail_saw(lab, fault_code):
    return [(subject, text) for subject, text in mails(lab)
            if subject.startswith("[FIRING") and GPU_NODE in subject + text and fault_code in subject + text]


def start_on_head(lab, name, program, port):
    lab.ssh(lab.head, f"cat > /tmp/{name}.py <<'PODSYS_EOF'\n{program}\nPODSYS_EOF")
    lab.ssh(lab.head, f"setsid nohup python3 /tmp/{name}.py >/tmp/{name}.log 2>&1 < /dev/null &")
    wait_for(f"{name} listening", lambda: f":{port}" in lab.ssh(lab.head, "ss -ltn").stdout, timeout=30, step=1)


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
    head = lab.addresses[lab.head]
    manifest["health"] = {"interval": INTERVAL, "prolog_gate": True,
                          "alert_receiver": {"webhook_url": f"http://{head}:{WEBHOOK_PORT}/alerts",
                                             "email": "oncall@lab.example", "smarthost": f"{head}:{SMTP_PORT}"}}
    lab.manifest.write_text(yaml.safe_dump(manifest, sort_keys=False))
    # the test receivers, on the head where Alertmanager runs
    start_on_head(lab, "podsys-webhook", WEBHOOK_SERVER, WEBHOOK_PORT)
    start_on_head(lab, "podsys-smtp", SMTP_SERVER, SMTP_PORT)
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
    conf = lab.ssh(lab.head, "cat /etc/slurm/slurm.conf").stdout
    assert "HealthCheckProgram=/usr/local/sbin/podsys-health-slurm" in conf and "Prolog=/usr/local/sbin/podsys-health-prolog" in conf


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
        subject, _ = wait_for("alert mail at the SMTP receiver", lambda: mail_saw(lab, code))[0]
        print(f"\nmail: {subject}")
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


PROLOG_LAST = "/var/lib/podsys-health/prolog-last.json"
HEALTH_PROM = "/var/lib/prometheus/node-exporter/podsys_health.prom"


def test_prolog_gate_runs_only_the_prolog_tier_and_keeps_a_job_off_a_faulty_node(health_lab):
    lab = health_lab
    # Inject right after a periodic run, so the next one is INTERVAL s away and the prolog of the
    # job below, not HealthCheckProgram, is what meets the fault.
    mtime = lambda: lab.ssh(GPU_NODE, f"stat -c %Y {HEALTH_PROM}").stdout.strip()  # noqa: E731
    before = mtime()
    wait_for("a periodic health run", lambda: mtime() != before, timeout=INTERVAL + 30, step=1)
    lab.ssh(GPU_NODE, f"rm -f {PROLOG_LAST}")
    done = podsys("lab", "fault", GPU_NODE, "gpu-missing", "--dir", str(lab.directory))
    assert done.returncode == 0, done.stderr
    job = lab.ssh(lab.head, f"sbatch --parsable --requeue -w {GPU_NODE} --wrap 'touch /tmp/podsys-prolog-job-$SLURM_JOB_ID; sleep 600'").stdout.strip()
    try:
        def drained():
            state, reason = node_state(lab, GPU_NODE)
            return (state, reason) if "DRAIN" in state and reason.startswith("podsys:gpu-missing prolog ") else None

        state, reason = wait_for("drain by the prolog gate", drained, timeout=INTERVAL)
        last = json.loads(wait_for("the prolog's verdict", lambda: lab.ssh(GPU_NODE, f"cat {PROLOG_LAST} 2>/dev/null || true").stdout.strip()))
        assert last["tier"] == "prolog" and last["verdict"] == "FAIL" and last["faults"] == ["gpu-missing"], last
        assert {f["check"] for f in last["findings"]} == checks_for_tier("prolog"), last["findings"]
        passive = json.loads(lab.ssh(GPU_NODE, "/usr/local/sbin/podsys-health --json", check=False).stdout)
        assert len(passive["findings"]) > len(last["findings"])
        print(f"\nprolog: {last['seconds']} s for {len(last['findings'])} checks (passive: {passive['seconds']} s for "
              f"{len(passive['findings'])}); {reason}")
        status = lab.ssh(lab.head, f"squeue -h -j {job} -o '%T %N'").stdout.strip()
        assert not status.startswith("RUNNING"), status  # requeued, and node01 is drained: it waits
        assert lab.ssh(GPU_NODE, f"test -e /tmp/podsys-prolog-job-{job}", check=False).returncode != 0, "the job ran on the faulty node"
    finally:
        lab.ssh(lab.head, f"scancel {job}", check=False)
        done = podsys("lab", "fault", GPU_NODE, "--dir", str(lab.directory))
        assert done.returncode == 0, done.stderr
        wait_for("node01 resumed by the periodic run", lambda: "DRAIN" not in node_state(lab, GPU_NODE)[0])


HEAVY = "gpu.dcgm_diag,nccl,bandwidth,infiniband.ib_write_bw"


def check_via_slurm(lab, output, *only):
    done = podsys("check", str(lab.manifest), "--via-slurm", "--only", ",".join(only) or HEAVY, "--dcgm-level", "2", "--json",
                  "--output", str(output), cwd=lab.directory, timeout=900)
    assert done.returncode in (0, 1), done.stdout[-2000:] + done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert json.loads((output / "report.json").read_text())["findings"] == report["findings"] and (output / "report.html").is_file()
    return done.returncode, report


def finding(report, check, node=GPU_NODE):
    (found,) = [f for f in report["findings"] if f["check"] == check and f["node"] == node]
    return found


def test_heavy_checks_via_slurm_run_as_jobs_on_idle_nodes_only(health_lab, tmp_path):
    lab = health_lab
    others = [n for n in lab.nodes if n != GPU_NODE]
    # busy: a job holds node01 -> no job of ours, its heavy checks SKIP with the reason
    holder = lab.ssh(lab.head, f"sbatch --parsable -w {GPU_NODE} --wrap 'sleep 600'").stdout.strip()
    try:
        wait_for("holder job running", lambda: lab.ssh(lab.head, f"squeue -h -j {holder} -o %T").stdout.strip() == "RUNNING")
        _, busy = check_via_slurm(lab, tmp_path / "busy")
        dcgm = finding(busy, "gpu.dcgm_diag")
        assert dcgm["verdict"] == "SKIP" and "busy in Slurm (" in dcgm["detail"], dcgm
        assert busy["via_slurm"]["jobs"] == [] and busy["via_slurm"]["busy"].keys() == {GPU_NODE}
        assert lab.ssh(lab.head, f"squeue -h -w {GPU_NODE} -o %i").stdout.split() == [holder]
    finally:
        lab.ssh(lab.head, f"scancel {holder}", check=False)
    wait_for("node01 idle", lambda: lab.ssh(lab.head, f"sinfo -h -n {GPU_NODE} -o %T").stdout.split()[:1] == ["idle"])

    # idle: each heavy check is a job in the run's reservation on node01; the dcgmi shim's replayed
    # healthy run is judged PASS, the tools the lab lacks SKIP with the reason the job printed
    code, idle = check_via_slurm(lab, tmp_path / "idle")
    assert code == 0, [f for f in idle["findings"] if f["verdict"] == "FAIL"]
    reservation = idle["via_slurm"]["reservation"]
    jobs = {j["probe"]: j for j in idle["via_slurm"]["jobs"]}
    assert reservation.startswith("podsys-check-") and set(jobs) == {"gpu-dcgm", "nccl", "nvbandwidth"}, idle["via_slurm"]
    assert all(j["node"] == GPU_NODE for j in jobs.values())
    # Slurm clears a finished job's reservation name when the reservation is deleted, so the job
    # record shows where it ran and how; the srun that started it named the run's reservation
    shown = lab.ssh(lab.head, f"scontrol show job {jobs['gpu-dcgm']['job']}").stdout
    assert "JobName=podsys-check-gpu-dcgm" in shown and f"\n   NodeList={GPU_NODE}\n" in shown and "JobState=COMPLETED" in shown, shown
    index = json.loads((tmp_path / "idle" / "raw" / "index.json").read_text())
    started = next(e for e in index if e["host"] == GPU_NODE and e["probe"] == "gpu-dcgm")
    assert f"--reservation={reservation} " in started["command"] and started["rc"] == 0, started
    assert [e["rc"] for e in index if e["probe"].startswith("slurm-reservation")] == [0, 0]  # created, deleted
    assert reservation not in lab.ssh(lab.head, "scontrol show reservation", check=False).stdout  # deleted after the run
    assert finding(idle, "gpu.dcgm_diag")["verdict"] == "PASS"
    assert finding(idle, "bandwidth.nvbandwidth")["verdict"] == "SKIP" and "not installed" in finding(idle, "bandwidth.nvbandwidth")["detail"]
    assert all(f["verdict"] == "SKIP" for f in idle["findings"] if f["check"].startswith("nccl") and f["node"] == GPU_NODE)
    assert not [f for f in idle["findings"] if f["node"] in others and f["verdict"] != "SKIP"]
    assert "Diagnostic" in (tmp_path / "idle" / "raw" / GPU_NODE / "gpu-dcgm.txt").read_text()

    # a failing DCGM run (replayed, passive checks untouched so the node stays idle): FAIL via Slurm
    failing = "".join(line for line in (REPO_ROOT / "tests/fixtures/checks/dcgmi_diag_r3_fail_dcgm4.txt").read_text().splitlines(True)
                      if not line.startswith("#"))
    target = f"{fault.DATA_DIR}/dcgmi-diag.txt"
    lab.ssh(GPU_NODE, f"cp {target} {target}.healthy && printf %s {shlex.quote(failing)} > {target}")
    try:
        code, bad = check_via_slurm(lab, tmp_path / "fail", "gpu.dcgm_diag")
        assert code == 1 and finding(bad, "gpu.dcgm_diag")["verdict"] == "FAIL", finding(bad, "gpu.dcgm_diag")
        assert [j["node"] for j in bad["via_slurm"]["jobs"]] == [GPU_NODE]
    finally:
        lab.ssh(GPU_NODE, f"mv {target}.healthy {target}", check=False)
