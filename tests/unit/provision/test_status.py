"""podsys.provision.status: the callback receiver and the read-only status page, over real HTTP
on loopback. The node list maps 127.0.0.1 to a node for the accepted path; the integration test
drives the same service from real node addresses in network namespaces."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.parse
import urllib.request

import pytest

from podsys.provision.state import NodeInfo, StateStore
from podsys.provision.status import COLUMNS, StatusServer, render_html, status_rows, webhook_event
from tests.unit.provision.host_key_samples import ECDSA, ED25519, RSA, host_key


def serve(store: StateStore):
    server = StatusServer(("127.0.0.1", 0), store, "unit", refresh_s=7, quiet=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture
def loopback_node(tmp_path):
    store = StateStore(tmp_path / "state", None, {"n1": NodeInfo("n1", "127.0.0.1", "02:00:00:00:00:01"),
                                                   "n2": NodeInfo("n2", "10.0.0.12", "02:00:00:00:00:02")})
    server, base = serve(store)
    yield store, base
    server.shutdown()
    server.server_close()


@pytest.fixture
def no_loopback_node(tmp_path):
    store = StateStore(tmp_path / "state", None, {"n2": NodeInfo("n2", "10.0.0.12", "02:00:00:00:00:02")})
    server, base = serve(store)
    yield store, base
    server.shutdown()
    server.server_close()


def get(url: str, data: bytes | None = None, headers: dict | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_callbacks_update_the_record_and_the_page(loopback_node):
    store, base = loopback_node
    assert get(f"{base}/api/v1/callback?event=start")[0] == 200
    assert get(f"{base}/api/v1/callback", data=b"event=stage&stage=packages&message=50%25")[0] == 200
    rec = store.records()["n1"]
    assert (rec["state"], rec["stage"], rec["message"]) == ("installing", "packages", "50%")
    code, body = get(f"{base}/api/v1/callback?event=finish")
    assert code == 200 and body.startswith("ok n1 installed")
    rows = json.loads(get(f"{base}/api/v1/status")[1])["nodes"]
    assert [(r["node"], r["state"], r["boot"]) for r in rows] == [("n1", "installed", "local"), ("n2", "pending", "install")]
    code, page = get(f"{base}/")
    assert code == 200 and '<meta http-equiv="refresh" content="7">' in page
    assert "<td>n1</td><td>local</td><td>installed</td>" in page and "<form" not in page


def test_subiquity_webhook_events_become_stages(loopback_node):
    store, base = loopback_node
    event = {"name": "subiquity/Install/install/curthooks", "description": "configuring target",
             "event_type": "start", "origin": "curtin", "result": None}
    code, _ = get(f"{base}/api/v1/webhook", data=json.dumps(event).encode(), headers={"Content-Type": "application/json"})
    assert code == 200
    rec = store.records()["n1"]
    assert (rec["state"], rec["stage"], rec["message"]) == ("installing", "subiquity/Install/install/curthooks", "configuring target")
    assert get(f"{base}/api/v1/webhook", data=b"not json")[0] == 400


def test_bad_event_and_unknown_paths(loopback_node):
    _, base = loopback_node
    assert get(f"{base}/api/v1/callback?event=explode")[0] == 400
    assert get(f"{base}/etc/passwd")[0] == 404
    req = urllib.request.Request(f"{base}/api/v1/status", method="DELETE")
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(req, timeout=5)
    assert exc.value.code == 405


def test_callbacks_from_unlisted_addresses_are_refused(no_loopback_node):
    store, base = no_loopback_node
    for url, data in ((f"{base}/api/v1/callback?event=finish", None),
                      (f"{base}/api/v1/webhook", b'{"name": "x"}')):
        code, body = get(url, data=data)
        assert code == 403 and "127.0.0.1 is not a node" in body
    assert store.records()["n2"]["state"] == "pending"
    assert not (store.state_dir / "nodes-state.json").exists()


def test_html_escapes_installer_messages(tmp_path):
    store = StateStore(tmp_path, None, {"n1": NodeInfo("n1", "10.0.0.11", "m")})
    store.record_event("n1", "fail", message="<script>alert(1)</script>")
    page = render_html("c", status_rows(store))
    assert "<script>" not in page and "&lt;script&gt;" in page


def test_webhook_failure_is_a_message_not_a_verdict():
    assert webhook_event({"name": "n", "description": "d", "result": "FAIL"}) == ("stage", "n", "FAIL: d")


def test_boot_scripts_follow_the_boot_state_and_unknown_macs_get_404(tmp_path):
    """The script a node's PXE boot fetches (nginx forwards ipxe/nodes/<mac>.ipxe here) comes
    from the rendered node table and changes with the node's boot state, with no file written."""
    from podsys.cluster.load import load_cluster
    from podsys.provision.boot_scripts import BootTable
    from podsys.provision.render import boot_script, render_files
    from podsys.provision.state import load_nodes_file
    from tests.unit.provision.test_render import write_manifest

    files = render_files(load_cluster(write_manifest(tmp_path)))
    table_path = tmp_path / "nodes.json"
    table_path.write_text(files["provision/nodes.json"])
    nodes, default = load_nodes_file(table_path)
    store = StateStore(tmp_path / "state", None, nodes, default)
    server = StatusServer(("127.0.0.1", 0), store, "unit", quiet=True,
                          boot_table=BootTable.from_data(json.loads(files["provision/nodes.json"])))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}/api/v1/boot"
    try:
        code, body = get(f"{base}/b8-3f-d2-00-00-02.ipxe")
        assert code == 200 and body == boot_script(files, "b8:3f:d2:00:00:02", "install")
        assert "netcfg/get_ipaddress=10.50.1.2" in body
        store.record_event("gpu02", "finish")
        code, body = get(f"{base}/b8-3f-d2-00-00-02.ipxe")
        assert code == 200 and body == boot_script(files, "b8:3f:d2:00:00:02", "local")
        store.set_boot_state(["gpu02"], "install")
        assert "kernel " in get(f"{base}/b8-3f-d2-00-00-02.ipxe")[1]
        for unknown in ("b8-3f-d2-00-00-99.ipxe", "b8-3f-d2-00-00-02", "../nodes-state.json", ""):
            code, body = get(f"{base}/{unknown}")
            assert code == 404 and "#!ipxe" not in body, unknown
        assert not any((tmp_path / "state").glob("*.ipxe"))
    finally:
        server.shutdown()
        server.server_close()


def test_without_a_node_table_every_boot_script_is_404(loopback_node):
    _, base = loopback_node
    assert get(f"{base}/api/v1/boot/02-00-00-00-00-01.ipxe")[0] == 404


# ----------------------------------------------------------------------------- host keys


def report_keys(base: str, value: str, *, post: bool = True) -> tuple[int, str]:
    """The ramdisk's key report (functions.sh, report_host_keys): a form POST, or a GET query."""
    fields = urllib.parse.urlencode({"event": "stage", "stage": "identity", "host_keys": value})
    if post:
        return get(f"{base}/api/v1/callback", data=fields.encode())
    return get(f"{base}/api/v1/callback?{fields}")


@pytest.mark.parametrize("post", [True, False], ids=["post-body", "get-query"])
def test_host_keys_are_stored_and_served_with_the_status(loopback_node, post):
    store, base = loopback_node
    code, body = report_keys(base, f"{ED25519}\n{ECDSA}\n{RSA}", post=post)
    assert code == 200 and body.startswith("ok n1 installing identity"), body
    assert store.records()["n1"]["host_keys"] == [ED25519, ECDSA, RSA]
    rows = {r["node"]: r for r in json.loads(get(f"{base}/api/v1/status")[1])["nodes"]}
    assert (rows["n1"]["host_keys"], rows["n2"]["host_keys"]) == ([ED25519, ECDSA, RSA], [])
    # The page's table stays as it was: keys are for podsys, not for the admin's eyes.
    assert "host_keys" not in COLUMNS and ED25519.split()[1] not in get(f"{base}/")[1]


def test_a_callback_without_host_keys_keeps_them(loopback_node):
    store, base = loopback_node
    assert report_keys(base, ED25519)[0] == 200
    assert get(f"{base}/api/v1/callback?event=finish&stage=done")[0] == 200
    assert store.records()["n1"]["host_keys"] == [ED25519]


@pytest.mark.parametrize("value, why", [
    ("", "1 to 8 lines"),
    ("\n".join([ED25519] * 9), "1 to 8 lines"),
    (f"{ED25519}\n", "line 2: not `<type> <base64>`"),
    (f"{ED25519} root@n1", "line 1: not `<type> <base64>`"),
    (f"ssh-ed25519  {ED25519.split()[1]}", "not `<type> <base64>`"),
    (f"{ED25519}\r", "not `<type> <base64>`"),
    ("ssh-dss " + host_key("ssh-dss").split()[1], "key type 'ssh-dss'"),
    ("ssh-ed25519 AAAA!bad", "not `<type> <base64>`"),
    ("ssh-ed25519 AAAAA", "not valid base64"),
    (host_key("ssh-ed25519", blob_type="ssh-rsa"), "not a ssh-ed25519 key"),
    ("ssh-rsa " + "A" * 993, "longer than 1000"),
    (f"{ED25519}\nssh-ed25519 x'; rm -rf /", "line 2"),
])
def test_bad_host_keys_get_400_and_nothing_is_recorded(loopback_node, value, why):
    store, base = loopback_node
    assert report_keys(base, ED25519)[0] == 200
    before = store.records()["n1"]
    code, body = report_keys(base, value)
    assert code == 400 and why in body, body
    assert store.records()["n1"] == before


def test_host_keys_from_an_unlisted_address_are_refused(no_loopback_node):
    store, base = no_loopback_node
    assert report_keys(base, ED25519)[0] == 403
    assert store.records()["n2"]["host_keys"] == []
