"""podsys.provision.power and `podsys power`. BMCs cannot exist here, so they are replayed:
a fake `ipmitool` that answers with ipmitool 1.8.19's exact messages, and a loopback Redfish
service shaped like the DMTF Redfish mockups."""

from __future__ import annotations

import base64
import json
import os
import stat
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from podsys.provision.power import IPMI, BMCError, BMCTarget, Redfish, read_password, run_power
from tests.conftest import invoke

SECRET = "S3cr3t-bmc-pw"

FAKE_IPMITOOL = r"""#!/usr/bin/env python3
# Replays ipmitool 1.8.19 (lanplus) output; chassis state per host in $FAKE_BMC_DIR/<host>.
import os, sys
args = sys.argv[1:]
log = os.environ["FAKE_BMC_DIR"] + "/argv.log"
with open(log, "a") as fh:
    fh.write(" ".join(args) + "\n")
host = args[args.index("-H") + 1]
password = open(args[args.index("-f") + 1]).read().splitlines()[0]
if host.endswith(".99") or password != os.environ["FAKE_BMC_PASSWORD"]:
    sys.stderr.write("Error: Unable to establish IPMI v2 / RMCP+ session\n")
    sys.exit(1)
state_file = os.path.join(os.environ["FAKE_BMC_DIR"], host)
state = open(state_file).read() if os.path.exists(state_file) else "off"
cmd = args[args.index("-f") + 2:]
if cmd == ["chassis", "power", "status"]:
    print(f"Chassis Power is {state}")
elif cmd[:2] == ["chassis", "power"] and cmd[2] in ("on", "off", "cycle"):
    if cmd[2] == "cycle" and state == "off":
        sys.stderr.write("Set Chassis Power Control to Cycle failed: Command not supported in present state\n")
        sys.exit(1)
    open(state_file, "w").write("off" if cmd[2] == "off" else "on")
    print("Chassis Power Control: " + {"on": "Up/On", "off": "Down/Off", "cycle": "Cycle"}[cmd[2]])
elif cmd == ["chassis", "bootdev", "pxe"]:
    open(state_file + ".bootdev", "w").write("pxe")
    print("Set Boot Device to pxe")
else:
    sys.stderr.write("Invalid command\n")
    sys.exit(1)
"""


@pytest.fixture
def fake_ipmitool(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tool = bin_dir / "ipmitool"
    tool.write_text(FAKE_IPMITOOL)
    tool.chmod(tool.stat().st_mode | stat.S_IEXEC)
    bmc_dir = tmp_path / "bmc"
    bmc_dir.mkdir()
    monkeypatch.setenv("FAKE_BMC_DIR", str(bmc_dir))
    monkeypatch.setenv("FAKE_BMC_PASSWORD", SECRET)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    pw = tmp_path / "bmc-password"
    pw.write_text(SECRET + "\n")
    pw.chmod(0o600)
    return bmc_dir, pw


def test_ipmi_actions_in_parallel_with_per_node_results(fake_ipmitool):
    bmc_dir, pw = fake_ipmitool
    (bmc_dir / "10.60.1.2").write_text("on")
    ipmi = IPMI("admin", pw)
    targets = [BMCTarget("n1", "10.60.1.1"), BMCTarget("n2", "10.60.1.2"), BMCTarget("n3", "10.60.1.99")]
    status = run_power(targets, "status", ipmi, secret=SECRET)
    assert [(r.node, r.ok, r.message) for r in status] == [
        ("n1", True, "off"), ("n2", True, "on"),
        ("n3", False, "ipmitool chassis power status: Error: Unable to establish IPMI v2 / RMCP+ session")]
    # cycle on a powered-off node means "turn it on"; on a running one, a real cycle.
    cycle = run_power(targets[:2], "cycle", ipmi, secret=SECRET)
    assert [r.message for r in cycle] == ["Chassis Power Control: Up/On", "Chassis Power Control: Cycle"]
    pxe = run_power(targets[:1], "pxe", ipmi, secret=SECRET)
    assert pxe[0].ok and (bmc_dir / "10.60.1.1.bootdev").read_text() == "pxe"
    log = (bmc_dir / "argv.log").read_text()
    assert SECRET not in log and f"-f {pw}" in log and "-I lanplus" in log


def test_unknown_action_is_refused(fake_ipmitool):
    with pytest.raises(BMCError, match="unknown power action"):
        run_power([BMCTarget("n1", "10.60.1.1")], "explode", IPMI("admin", fake_ipmitool[1]))


def test_messages_never_carry_the_password():
    class Leaky:
        def act(self, address, action):
            raise BMCError(f"login failed for admin:{SECRET}@{address}")

    result = run_power([BMCTarget("n1", "10.60.1.1")], "on", Leaky(), secret=SECRET)
    assert SECRET not in result[0].message and "********" in result[0].message


def test_password_file_problems(tmp_path):
    with pytest.raises(BMCError, match="cannot read"):
        read_password(tmp_path / "missing")
    (tmp_path / "empty").write_text("")
    with pytest.raises(BMCError, match="empty"):
        read_password(tmp_path / "empty")


class FakeRedfish(BaseHTTPRequestHandler):
    """/redfish/v1/Systems -> one system; Reset and Boot override change its state."""

    state = {"PowerState": "Off", "Boot": {"BootSourceOverrideTarget": "None", "BootSourceOverrideEnabled": "Disabled"}}
    resets: list[str] = []

    def log_message(self, *args):
        pass

    def _json(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _authorised(self):
        expected = "Basic " + base64.b64encode(f"admin:{SECRET}".encode()).decode()
        if self.headers.get("Authorization") != expected:
            self._json(401, {"error": {"message": "Unauthorized"}})
            return False
        return True

    def do_GET(self):
        if not self._authorised():
            return
        if self.path == "/redfish/v1/Systems":
            self._json(200, {"@odata.id": "/redfish/v1/Systems", "Members@odata.count": 1,
                             "Members": [{"@odata.id": "/redfish/v1/Systems/437XR1138R2"}]})
        elif self.path == "/redfish/v1/Systems/437XR1138R2":
            self._json(200, {"@odata.id": "/redfish/v1/Systems/437XR1138R2", "Id": "437XR1138R2", **self.state})
        else:
            self._json(404, {})

    def _body(self):
        return json.loads(self.rfile.read(int(self.headers["Content-Length"])))

    def do_POST(self):
        if not self._authorised():
            return
        if self.path == "/redfish/v1/Systems/437XR1138R2/Actions/ComputerSystem.Reset":
            kind = self._body()["ResetType"]
            FakeRedfish.resets.append(kind)
            self.state["PowerState"] = "Off" if kind == "ForceOff" else "On"
            self.send_response(204)
            self.end_headers()
        else:
            self._json(404, {})

    def do_PATCH(self):
        if not self._authorised():
            return
        self.state["Boot"].update(self._body()["Boot"])
        self._json(200, {})


@pytest.fixture
def redfish_bmc():
    FakeRedfish.resets = []
    FakeRedfish.state = {"PowerState": "Off", "Boot": {"BootSourceOverrideTarget": "None",
                                                       "BootSourceOverrideEnabled": "Disabled"}}
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeRedfish)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_redfish_on_status_pxe_and_bad_credentials(redfish_bmc):
    bmc = Redfish("admin", SECRET, url_template=f"http://{{address}}:{redfish_bmc}")
    target = [BMCTarget("n1", "127.0.0.1")]
    assert run_power(target, "status", bmc, SECRET)[0].message == "off"
    assert run_power(target, "on", bmc, SECRET)[0].ok and FakeRedfish.resets == ["On"]
    result = run_power(target, "pxe", bmc, SECRET)[0]
    assert result.ok and result.message == "next boot PXE, restart requested"
    assert FakeRedfish.state["Boot"] == {"BootSourceOverrideTarget": "Pxe", "BootSourceOverrideEnabled": "Once"}
    assert FakeRedfish.resets == ["On", "ForceRestart"]
    wrong = Redfish("admin", "wrong", url_template=f"http://{{address}}:{redfish_bmc}")
    failed = run_power(target, "off", wrong, "wrong")[0]
    assert not failed.ok and "HTTP 401" in failed.message


def write_bmc_manifest(tmp_path: Path, pw: Path) -> Path:
    path = tmp_path / "cluster.yaml"
    path.write_text(f"""\
apiVersion: podsys/v1
kind: Cluster
metadata: {{name: pw}}
head: {{hostname: head, interface: eno1, address: 10.50.0.1}}
networks:
  provision: {{cidr: 10.50.0.0/16}}
  bmc: {{cidr: 10.60.0.0/16}}
os: {{distro: debian, version: "12"}}
bmc: {{protocol: ipmi, username: admin, password_file: {pw.name}}}
node_groups:
  - name: gpu
    hosts: gpu[01-02]
    hardware: cpu-only
    pxe: false
    start_address: 10.50.1.1
""")
    return path


def test_power_command_reports_each_node_and_never_prints_the_password(tmp_path, fake_ipmitool):
    _, pw = fake_ipmitool
    manifest = write_bmc_manifest(tmp_path, pw)
    result = invoke("power", "on", "gpu[01-02]", "-m", str(manifest), "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [(r["node"], r["ok"]) for r in rows] == [("gpu01", True), ("gpu02", True)]
    assert SECRET not in result.output
    bad = invoke("power", "reboot", "gpu01", "-m", str(manifest))
    assert bad.exit_code == 2 and "unknown action 'reboot'" in bad.output
    unknown = invoke("power", "on", "gpu09", "-m", str(manifest))
    assert unknown.exit_code == 2 and "HOSTLIST: 'gpu09': not hosts of this cluster: gpu09" in unknown.output


def test_power_command_fails_when_a_bmc_refuses(tmp_path, fake_ipmitool, monkeypatch):
    _, pw = fake_ipmitool
    monkeypatch.setenv("FAKE_BMC_PASSWORD", "something-else")  # the BMC now rejects our password
    manifest = write_bmc_manifest(tmp_path, pw)
    result = invoke("power", "status", "gpu01", "-m", str(manifest), "--json")
    assert result.exit_code == 1
    assert "power status failed on 1 of 1 node(s)" in result.output and SECRET not in result.output
    rows = json.loads(result.stdout)
    assert rows == [{"node": "gpu01", "ok": False,
                     "message": "ipmitool chassis power status: Error: Unable to establish IPMI v2 / RMCP+ session"}]


# ipmitool 1.8.19 against OpenIPMI's ipmi_sim 2.0.33 on this machine, `-I lanplus -C 3 ... chassis
# bootdev pxe`: with no chassis_control program the BMC refuses both boot parameters, ipmitool
# says so on stderr, prints nothing on stdout and exits 0; with one, stdout says it was set.
BOOTDEV_REFUSED_STDERR = ("Set Chassis Boot Parameter 4 failed: Invalid data field in request\n"
                          "Set Chassis Boot Parameter 5 failed: Invalid data field in request\n")
BOOTDEV_SET_STDOUT = "Set Boot Device to pxe\n"


class Replay:
    """A runner answering each ipmitool command with recorded (rc, stdout, stderr)."""

    def __init__(self, answers):
        self.answers = answers
        self.argv: list[list[str]] = []

    def __call__(self, argv):
        import subprocess

        self.argv.append(argv)
        command = " ".join(argv[argv.index("-f") + 2:])
        rc, out, err = self.answers[command]
        return subprocess.CompletedProcess(argv, rc, out, err)


def test_bootdev_refused_with_exit_0_is_an_error_and_nothing_is_power_cycled(tmp_path):
    replay = Replay({"chassis bootdev pxe": (0, "", BOOTDEV_REFUSED_STDERR),
                     "chassis power status": (0, "Chassis Power is on\n", ""),
                     "chassis power cycle": (0, "Chassis Power Control: Cycle\n", "")})
    [result] = run_power([BMCTarget("n1", "10.60.1.1")], "pxe", IPMI("admin", tmp_path / "pw", runner=replay))
    assert not result.ok
    assert result.message == ("ipmitool chassis bootdev pxe: the BMC refused the boot device: "
                              "Invalid data field in request")
    assert [a[a.index("-f") + 2:] for a in replay.argv] == [["chassis", "bootdev", "pxe"]]


def test_bootdev_without_confirmation_is_an_error():
    from podsys.provision.power import bootdev_failure

    assert bootdev_failure(BOOTDEV_SET_STDOUT, "") is None
    assert bootdev_failure("", "") == "ipmitool did not confirm the boot device (no output)"
    assert bootdev_failure(BOOTDEV_SET_STDOUT, BOOTDEV_REFUSED_STDERR).startswith("the BMC refused")


def test_bootdev_set_then_cycle_with_the_cipher_suite_pinned(tmp_path):
    replay = Replay({"chassis bootdev pxe": (0, BOOTDEV_SET_STDOUT, ""),
                     "chassis power status": (0, "Chassis Power is off\n", ""),
                     "chassis power on": (0, "Chassis Power Control: Up/On\n", "")})
    [result] = run_power([BMCTarget("n1", "10.60.1.1")], "pxe",
                         IPMI("admin", tmp_path / "pw", runner=replay, cipher_suite=3))
    assert (result.ok, result.message) == (True, "Chassis Power Control: Up/On")
    assert all(a[1:5] == ["-I", "lanplus", "-C", "3"] for a in replay.argv)
    default = Replay({"chassis power status": (0, "Chassis Power is off\n", "")})
    IPMI("admin", tmp_path / "pw", runner=default).act("10.60.1.1", "status")
    assert "-C" not in default.argv[0]
