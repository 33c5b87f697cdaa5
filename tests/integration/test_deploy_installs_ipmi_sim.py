"""`podsys deploy`'s install driver against real parts, in real time: two IPMI BMCs served by
ipmi_sim and driven by ipmitool, and the head's status service (podsys.provision.status, on
loopback). What cannot exist here is the machine itself: each BMC's chassis_control program
plays the node. When it is powered on with boot device pxe it sends the callbacks the deploy
ramdisk sends (podsys/data/ramdisk/init + functions.sh: pxe, start network, fetch and write with
bytes=, finish; or fail at verify), from the node's own provision address, as curl would from
the ramdisk. The node has no SSH server, so the SSH probe is the one stand-in: it answers for a
node whose install finished."""

from __future__ import annotations

import threading
import time

import pytest

from podsys.deploy.install_backends import url_records
from podsys.deploy.installs import InstallDriver, Phase, plan_installs
from podsys.provision.power import IPMI, BMCTarget, run_power
from podsys.provision.state import NodeInfo, StateStore
from podsys.provision.status import StatusServer
from tests.integration.ipmi_sim import ipmi_sim, require_tools

pytestmark = pytest.mark.integration

PASSWORD = "lab-bmc-pw"
BMC = {"vm1": "127.0.87.1", "vm2": "127.0.87.2"}
NODE_IP = {"vm1": "127.0.87.11", "vm2": "127.0.87.12"}

NODE = """#!/bin/sh
# chassis_control: "<name> get power boot" | "<name> set power 0|1 boot pxe|default"
dir="{dir}"; status="{status}"
name=$1; shift
callback() {{ curl -s -o /dev/null --interface "$(cat "$dir/$name.ip")" "$status/api/v1/callback?$1"; }}
case "$1" in
  get) shift; for p in "$@"; do case $p in
         power) echo "power:$(cat "$dir/$name.power" 2>/dev/null || echo 0)";;
         boot) echo "boot:$(cat "$dir/$name.boot" 2>/dev/null || echo default)";; esac; done;;
  set) shift
       while [ $# -ge 2 ]; do echo "$2" > "$dir/$name.$1"; shift 2; done
       if [ "$(cat "$dir/$name.power" 2>/dev/null)" = 1 ] && [ "$(cat "$dir/$name.boot" 2>/dev/null)" = pxe ]; then
         echo default > "$dir/$name.boot"  # the boot device is one-shot
         (
           sleep 1; callback "event=stage&stage=pxe"
           sleep 1; callback "event=start&stage=network"
           sleep 1; callback "event=stage&stage=fetch&message=bytes%3D1048576"
           if [ "$name" = vm2 ]; then
             sleep 1; callback "event=fail&stage=verify&message=sha256%20mismatch"
           else
             sleep 1; callback "event=stage&stage=write&message=bytes%3D734003200"
             sleep 1; callback "event=finish&stage=done&message=installed"
           fi
         ) > /dev/null 2>&1 &
       fi;;
esac
"""


@pytest.fixture
def site(tmp_path):
    require_tools()
    nodes = {n: NodeInfo(n, NODE_IP[n], f"52:54:00:00:87:0{i}") for i, n in enumerate(BMC, 1)}
    store = StateStore(tmp_path / "state", None, nodes, "install")
    server = StatusServer(("127.0.0.1", 0), store, "lab", quiet=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    status = f"http://127.0.0.1:{server.server_address[1]}"
    control = tmp_path / "node"
    control.write_text(NODE.format(dir=tmp_path, status=status))
    control.chmod(0o755)
    for name, ip in NODE_IP.items():
        (tmp_path / f"{name}.ip").write_text(ip)
    try:
        with ipmi_sim(tmp_path, PASSWORD, [(n, BMC[n], control) for n in BMC]) as password_file:
            yield status, IPMI("admin", password_file, cipher_suite=3)
    finally:
        server.shutdown()
        server.server_close()


def test_bmcs_power_the_nodes_their_callbacks_drive_the_phases_and_a_second_run_powers_only_the_failed(site):
    status, ipmi = site
    powered: list[list[str]] = []

    def power(names):
        powered.append(names)
        results = run_power([BMCTarget(n, BMC[n]) for n in names], "pxe", ipmi, secret=PASSWORD)
        return {r.node: "" if r.ok else r.message for r in results}

    def probe(node, record):
        # The driver hands the probe the node's record (its reported host keys live there).
        assert record.state == url_records(status)[node].state
        return "" if record.state == "installed" else "cannot connect: [Errno 111] Connection refused"

    frames = []
    plan = plan_installs(url_records(status), None)
    assert plan.power == ("vm1", "vm2")
    driver = InstallDriver(lambda: url_records(status), probe, clock=time.monotonic, sleep=time.sleep,
                           timeout_s=60, poll_s=0.5, show=frames.append)
    outcome = driver.run(plan, power, list(BMC))
    assert powered == [["vm1", "vm2"]]
    by_node = {p.node: p for p in outcome.progress}
    assert by_node["vm1"].phase is Phase.REACHABLE
    assert (by_node["vm2"].phase, by_node["vm2"].stage, by_node["vm2"].message) == (Phase.FAILED, "verify", "sha256 mismatch")
    assert by_node["vm1"].elapsed < 30
    seen = {(p.node, p.phase, p.stage) for frame in frames for p in frame}
    assert ("vm1", Phase.INSTALLING, "fetch") in seen or ("vm1", Phase.INSTALLING, "write") in seen, seen
    assert any(p.bytes == 734003200 for frame in frames for p in frame if p.node == "vm1") or \
        any(p.bytes == 1048576 for frame in frames for p in frame if p.node == "vm1")

    # The next deploy: vm1 boots its disk now (the finish callback switched it to local) and is
    # left alone; vm2 is powered again.
    records = url_records(status)
    assert (records["vm1"].boot, records["vm2"].boot) == ("local", "install")
    again = plan_installs(records, None)
    assert (again.power, again.installed) == (("vm2",), ("vm1",))
