"""podsys.provision.state: boot state (install/local) and install progress on the head."""

from __future__ import annotations

import json

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
    parse_host_keys,
)
from tests.unit.provision.host_key_samples import ECDSA, ED25519, RSA, host_key

NODES = {
    "n1": NodeInfo("n1", "10.0.0.11", "02:00:00:00:00:01"),
    "n2": NodeInfo("n2", "10.0.0.12", "02:00:00:00:00:02"),
}


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


def test_init_gives_new_nodes_their_default_and_is_idempotent(tmp_path):
    store = StateStore(tmp_path / "state", None, NODES, "install")
    assert store.init_boot_states() == ["n1", "n2"]
    assert store.init_boot_states() == []
    assert {r["boot"] for r in store.records().values()} == {"install"}
    # a node already recorded keeps its state when a later render changes the default
    store.record_event("n1", "finish")
    assert StateStore(tmp_path / "state", None, NODES, "install").init_boot_states() == []
    assert [store.boot_state(n) for n in NODES] == ["local", "install"]


def test_finish_switches_to_local_and_reinstall_switches_back(tmp_path):
    # The status service reads boot_state on each boot request: nothing is written to the
    # boot tree any more, so a boot root that does not exist is fine.
    root = tmp_path / "boot"
    store = StateStore(tmp_path / "state", root, NODES, "install")
    store.init_boot_states()
    store.record_event("n1", "start")
    assert store.boot_state("n1") == "install"
    store.record_event("n1", "finish")
    assert store.records()["n1"]["boot"] == "local"
    assert (store.boot_state("n1"), store.boot_state("n2")) == ("local", "install")
    assert store.set_boot_state(["n1", "n2"], "install") == ["n1"]
    rec = store.records()["n1"]
    assert (rec["boot"], rec["state"], rec["started"]) == ("install", "pending", None)
    assert store.boot_state("n1") == "install"
    assert not root.exists()


def test_the_service_sees_every_switch_made_by_another_process(tmp_path):
    # The status service keeps its own store; `podsys reinstall` and the callbacks write
    # through others. Its cached boot states must follow every replaced state file.
    service = StateStore(tmp_path / "state", None, NODES, "install")
    cli = StateStore(tmp_path / "state", None, NODES, "install")
    assert service.boot_state("n1") == "install"
    for boot in ("local", "install", "local"):
        cli.set_boot_state(["n1"], boot)
        assert service.boot_state("n1") == boot
    cli.record_event("n2", "finish")
    assert (service.boot_state("n1"), service.boot_state("n2")) == ("local", "local")


def test_a_node_never_seen_boots_in_the_default_state(tmp_path):
    assert StateStore(tmp_path / "state", None, NODES, "local").boot_state("n2") == "local"
    assert StateStore(tmp_path / "state", None, NODES, "install").boot_state("n2") == "install"


def test_state_survives_a_new_store(tmp_path):
    StateStore(tmp_path / "state", None, NODES).record_event("n2", "stage", "packages")
    again = StateStore(tmp_path / "state", None, NODES)
    assert again.records()["n2"]["stage"] == "packages"
    assert json.loads((tmp_path / "state" / "nodes-state.json").read_text())["nodes"]["n2"]["state"] == "installing"


def test_unknown_node_and_state_are_refused(tmp_path):
    store = StateStore(tmp_path / "state", None, NODES)
    with pytest.raises(StateError, match="not PXE nodes"):
        store.set_boot_state(["n9"], "install")
    with pytest.raises(StateError, match="unknown boot state"):
        store.set_boot_state(["n1"], "rescue")


def test_address_lookup_is_by_provision_ip(tmp_path):
    store = StateStore(tmp_path, None, NODES)
    assert store.node_for_address("10.0.0.12") == "n2"
    assert store.node_for_address("10.0.0.99") is None


def test_role_entry_point_init_then_local(tmp_path, capsys):
    nodes = tmp_path / "nodes.json"
    nodes.write_text(json.dumps({"cluster": "c", "default_boot_state": "local",
                                 "nodes": {n.name: {"ip": n.ip, "mac": n.mac, "pxe": True} for n in NODES.values()}}))
    args = ["--nodes", str(nodes), "--state-dir", str(tmp_path / "state")]
    assert main(["init", *args]) == 0
    assert capsys.readouterr().out == "changed: 2\n"
    assert StateStore(tmp_path / "state", None, NODES).boot_state("n2") == "local"
    assert main(["init", *args]) == 0
    assert capsys.readouterr().out == "changed: 0\n"
    assert main(["install", "n2", *args]) == 0
    assert capsys.readouterr().out == "changed: 1\n"
    assert main(["local", "n9", *args]) == 1


# ----------------------------------------------------------------------------- host keys


def test_host_keys_are_kept_through_the_run_and_replaced_by_a_new_report():
    rec = apply_event(new_record("install"), "start", "network")
    rec = apply_event(rec, "stage", "identity", host_keys=[ED25519, RSA])
    rec = apply_event(rec, "finish", "done")
    assert rec["host_keys"] == [ED25519, RSA] and rec["boot"] == "local"
    assert apply_event(rec, "stage", "identity", host_keys=[ECDSA])["host_keys"] == [ECDSA]
    assert new_record("install")["host_keys"] == []


def test_a_new_run_forgets_the_last_runs_keys():
    # Retried after a failure: boot stays `install`, nobody called set_boot_state.
    failed = apply_event(apply_event(new_record("install"), "stage", "identity", host_keys=[ED25519]), "fail", "identity")
    assert failed["host_keys"] == [ED25519]
    assert apply_event(failed, "stage", "pxe")["host_keys"] == []
    assert apply_event(failed, "start", "network")["host_keys"] == []


def test_reinstall_clears_the_keys_and_state_show_carries_them(tmp_path, capsys):
    store = StateStore(tmp_path / "state", None, NODES, "install")
    store.record_event("n1", "stage", "identity", host_keys=[ED25519, ECDSA])
    store.record_event("n1", "finish", "done")
    nodes = tmp_path / "nodes.json"
    nodes.write_text(json.dumps({"nodes": {n: {"ip": i.ip, "mac": i.mac} for n, i in NODES.items()}}))
    args = ["--nodes", str(nodes), "--state-dir", str(tmp_path / "state")]
    assert main(["show", *args]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["n1"]["host_keys"], shown["n2"]["host_keys"]) == ([ED25519, ECDSA], [])
    store.set_boot_state(["n1"], "install")
    assert store.records()["n1"]["host_keys"] == []


def test_state_from_before_host_keys_reads_as_none(tmp_path):
    (tmp_path / "state").mkdir()
    old = {k: v for k, v in new_record("local").items() if k != "host_keys"}
    (tmp_path / "state" / "nodes-state.json").write_text(json.dumps({"nodes": {"n1": old}}))
    assert StateStore(tmp_path / "state", None, NODES, "install").records()["n1"]["host_keys"] == []


def test_parse_host_keys_returns_the_lines():
    assert parse_host_keys(f"{ED25519}\n{host_key('ecdsa-sha2-nistp521')}") == [ED25519, host_key("ecdsa-sha2-nistp521")]
    with pytest.raises(ValueError, match="line 1: the key's blob is not a ssh-rsa key"):
        parse_host_keys("ssh-rsa AAAA")
