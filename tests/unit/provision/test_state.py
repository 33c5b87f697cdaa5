"""podsys.provision.state: boot state (install/local) and install progress on the head."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from podsys.provision.state import (
    NodeInfo,
    StateError,
    StateStore,
    apply_event,
    duration_seconds,
    format_duration,
    main,
    new_record,
)

NODES = {
    "n1": NodeInfo("n1", "10.0.0.11", "02:00:00:00:00:01"),
    "n2": NodeInfo("n2", "10.0.0.12", "02:00:00:00:00:02"),
}


def boot_tree(root: Path) -> Path:
    for node in NODES.values():
        stem = node.mac.replace(":", "-")
        for state in ("install", "local"):
            target = root / "ipxe" / state / f"{stem}.ipxe"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(f"#!ipxe\n# {node.name} {state}\n")
    return root


def active(root: Path, name: str) -> str:
    return (root / "ipxe/nodes" / (NODES[name].mac.replace(":", "-") + ".ipxe")).read_text()


def test_events_move_a_node_through_its_install():
    rec = new_record("install")
    rec = apply_event(rec, "stage", "pxe", now="2026-01-01T10:00:00Z")
    assert rec["state"] == "installing" and rec["started"] == "2026-01-01T10:00:00Z"
    rec = apply_event(rec, "start", now="2026-01-01T10:00:30Z")
    assert rec["started"] == "2026-01-01T10:00:00Z"  # the earliest callback of the run
    rec = apply_event(rec, "stage", "partitioning", now="2026-01-01T10:01:00Z")
    assert (rec["state"], rec["stage"]) == ("installing", "partitioning")
    rec = apply_event(rec, "finish", message="done", now="2026-01-01T10:12:05Z")
    assert (rec["state"], rec["boot"], rec["finished"], rec["message"]) == ("installed", "local", "2026-01-01T10:12:05Z", "done")
    assert duration_seconds(rec) == 725 and format_duration(725) == "12:05"
    assert format_duration(3725) == "1:02:05"


def test_failure_keeps_the_install_boot_state():
    rec = apply_event(apply_event(new_record("install"), "start"), "fail", message="disk not found")
    assert (rec["state"], rec["boot"], rec["message"]) == ("failed", "install", "disk not found")


def test_unknown_event_is_refused():
    with pytest.raises(StateError, match="unknown event"):
        apply_event(new_record("install"), "reboot")


def test_init_writes_active_scripts_and_is_idempotent(tmp_path):
    root = boot_tree(tmp_path / "boot")
    store = StateStore(tmp_path / "state", root, NODES, "install")
    assert store.init_boot_states() == ["n1", "n2"]
    assert active(root, "n1") == "#!ipxe\n# n1 install\n"
    assert store.init_boot_states() == []
    assert {r["boot"] for r in store.records().values()} == {"install"}
    # A re-render changed n2's install script: init serves the new one and says so.
    (root / "ipxe/install/02-00-00-00-00-02.ipxe").write_text("#!ipxe\n# n2 install v2\n")
    assert store.init_boot_states() == ["n2"]
    assert active(root, "n2") == "#!ipxe\n# n2 install v2\n"


def test_finish_switches_to_local_and_reinstall_switches_back(tmp_path):
    root = boot_tree(tmp_path / "boot")
    store = StateStore(tmp_path / "state", root, NODES, "install")
    store.init_boot_states()
    store.record_event("n1", "start")
    store.record_event("n1", "finish")
    assert store.records()["n1"]["boot"] == "local"
    assert active(root, "n1") == "#!ipxe\n# n1 local\n"
    assert active(root, "n2") == "#!ipxe\n# n2 install\n"
    assert store.set_boot_state(["n1", "n2"], "install") == ["n1"]
    rec = store.records()["n1"]
    assert (rec["boot"], rec["state"], rec["started"]) == ("install", "pending", None)
    assert active(root, "n1") == "#!ipxe\n# n1 install\n"


def test_state_survives_a_new_store(tmp_path):
    root = boot_tree(tmp_path / "boot")
    StateStore(tmp_path / "state", root, NODES).record_event("n2", "stage", "packages")
    again = StateStore(tmp_path / "state", root, NODES)
    assert again.records()["n2"]["stage"] == "packages"
    assert json.loads((tmp_path / "state" / "nodes-state.json").read_text())["nodes"]["n2"]["state"] == "installing"


def test_unknown_node_and_state_are_refused(tmp_path):
    store = StateStore(tmp_path / "state", boot_tree(tmp_path / "boot"), NODES)
    with pytest.raises(StateError, match="not PXE nodes"):
        store.set_boot_state(["n9"], "install")
    with pytest.raises(StateError, match="unknown boot state"):
        store.set_boot_state(["n1"], "rescue")


def test_missing_rendered_script_is_a_clear_error(tmp_path):
    store = StateStore(tmp_path / "state", tmp_path / "empty-boot", NODES)
    with pytest.raises(StateError, match="no rendered 'local' boot script for n1"):
        store.set_boot_state(["n1"], "local")


def test_address_lookup_is_by_provision_ip(tmp_path):
    store = StateStore(tmp_path, None, NODES)
    assert store.node_for_address("10.0.0.12") == "n2"
    assert store.node_for_address("10.0.0.99") is None


def test_role_entry_point_init_then_local(tmp_path, capsys):
    root = boot_tree(tmp_path / "boot")
    nodes = tmp_path / "nodes.json"
    nodes.write_text(json.dumps({"cluster": "c", "default_boot_state": "local",
                                 "nodes": {n.name: {"ip": n.ip, "mac": n.mac, "pxe": True} for n in NODES.values()}}))
    args = ["--nodes", str(nodes), "--state-dir", str(tmp_path / "state"), "--boot-root", str(root)]
    assert main(["init", *args]) == 0
    assert capsys.readouterr().out == "changed: 2\n"
    assert active(root, "n2") == "#!ipxe\n# n2 local\n"
    assert main(["init", *args]) == 0
    assert capsys.readouterr().out == "changed: 0\n"
    assert main(["install", "n2", *args]) == 0
    assert capsys.readouterr().out == "changed: 1\n"
    assert main(["local", "n9", *args]) == 1
