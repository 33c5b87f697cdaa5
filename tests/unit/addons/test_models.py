"""Layer models: manifest validation (file:line:field, exit 2), what render hands the models
role and the training environment, the role's templates, and `podsys models list` parsing
MLflow's REST answers recorded from a real MLflow 3.17.2 server (tests/fixtures/mlflow/README.md)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jinja2
import pytest
import yaml

from podsys import layout
from podsys.addons import mlflow_rest
from podsys.addons.models import format_metrics, model_versions
from podsys.bundle.addon_wheels import wheel_sets
from podsys.cluster.layer_catalogue import layer_info
from podsys.cluster.load import load_cluster
from podsys.render.build import SECRETS_FILE, VARS_FILE, render_files
from podsys.render.training import group_env
from tests.conftest import REPO_ROOT
from tests.unit.manifest_samples import MACS, line_of
from tests.unit.cluster.test_addons import ADDONS, assert_problem, problems_for

FIXTURES = REPO_ROOT / "tests" / "fixtures" / "mlflow"
ROLE = REPO_ROOT / "podsys" / "playbooks" / "roles" / "models"
# `openssl passwd -6 -salt podsys secret`: a real crypt(3) SHA-512 hash.
HASH = "$6$podsys$w74JlhJTMgueptXv4Gxl/b66Nx03JF4vXK1OlD0nTL8/aId6cl8j8Ov8tDNFThIYXTYM84/yeLvc8z3GXtR6m/"

MODELS = ADDONS.replace("accounting, storage, training]", "accounting, storage, training, models]").replace(
    "  - {name: alice, uid: 2001}", "  - {name: alice, uid: 2001, password_hash: '" + HASH + "'}") + """\
models:
  artifact_dir: /shared/mlflow
"""


@pytest.fixture()
def cluster(tmp_path):
    return load_cluster(_write(tmp_path, MODELS))


def _write(tmp_path, text, wheels: bool = True):
    """The manifest, and (wheels) the wheelhouses validate asks for: a file per pinned requirement
    of the role's defaults, named as pip download names it (its contents are never read here)."""
    from tests.unit.manifest_samples import write_manifest, write_model_wheels
    if wheels:
        write_model_wheels(tmp_path)
    return write_manifest(tmp_path, text, MACS)


def _vars(cluster) -> tuple[dict, dict]:
    files = render_files(cluster)
    return yaml.safe_load(files[VARS_FILE]), yaml.safe_load(files[SECRETS_FILE])


def test_the_hash_is_a_real_crypt_hash():
    made = subprocess.run(["openssl", "passwd", "-6", "-salt", "podsys", "secret"], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip("openssl not installed")
    assert made.stdout.strip() == HASH


def test_render_gives_the_role_its_settings_and_keeps_hashes_in_the_secrets_file(cluster, tmp_path):
    all_vars, secrets = _vars(cluster)
    models = all_vars["podsys_models"]
    assert models["wheelhouse"] == str((tmp_path / "wheels" / "mlflow").resolve())
    assert models["client_wheelhouse"] == str((tmp_path / "wheels" / "mlflow-client").resolve())
    assert models["artifact_dir"] == "/shared/mlflow"
    assert (models["https_port"], models["mlflow_port"]) == (layout.MODELS_HTTPS_PORT, layout.MLFLOW_PORT) == (5443, 5000)
    head = cluster.manifest.head
    assert f"{head.hostname}:*" in models["allowed_hosts"] and f"{head.address}:*" in models["allowed_hosts"]
    assert f"https://{head.hostname}:5443" in models["cors_origins"]
    assert models["trusted_networks"] == [str(cluster.manifest.networks.provision.cidr)]
    assert HASH not in render_files(cluster)[VARS_FILE]
    assert secrets["podsys_secrets"]["user_password_hashes"] == {"alice": HASH}


def test_the_training_environment_points_jobs_at_mlflow_only_with_the_layer(cluster, tmp_path):
    env = dict(l.split("=", 1) for l in group_env(cluster, "gpu").splitlines() if l and not l.startswith("#"))
    assert env["MLFLOW_TRACKING_URI"] == f"https://{cluster.manifest.head.hostname}:5443"
    assert env["MLFLOW_TRACKING_SERVER_CERT_PATH"] == "/etc/podsys/tls/site.crt"
    assert env["PODSYS_PYTHON"] == "/opt/podsys/mlflow-client/bin/python3"
    assert env["GIT_PYTHON_REFRESH"] == "quiet"
    (tmp_path / "plain").mkdir()
    without = load_cluster(_write(tmp_path / "plain", ADDONS))
    assert "MLFLOW" not in group_env(without, "gpu") and "podsys_models" not in _vars(without)[0]


# (what to replace, with what, the line holding it, the field, a fragment of the message)
BAD = [
    ("artifact_dir: /shared/mlflow", "artifact_dir: /var/lib/mlflow", "artifact_dir: /var/lib/mlflow",
     "models.artifact_dir", "not on shared storage"),
    ("artifact_dir: /shared/mlflow", "artifact_dir: mlflow", "artifact_dir: mlflow", "models.artifact_dir", ""),
    ("artifact_dir: /shared/mlflow", "artifact_dir: /shared/mlflow\n  port: 5000", "port: 5000", "models.port",
     "unknown key 'port'"),
    ("monitoring, accounting, storage, training, models]", "monitoring, storage, training, models]",
     "monitoring, storage, training, models]", "layers", "needs layer 'accounting'"),
]


@pytest.mark.parametrize("old,new,needle,field,fragment", BAD, ids=[b[3] + ":" + b[1][-20:] for b in BAD])
def test_bad_models_input_names_file_line_and_field(tmp_path, old, new, needle, field, fragment):
    assert old in MODELS
    text = MODELS.replace(old, new, 1)
    if "accounting" not in text.split("layers:")[1].split("\n")[0]:
        text = re.sub(r"^accounts:\n(  .*\n|    .*\n|      .*\n)*", "", text, flags=re.M)
    path, problems = problems_for(tmp_path, text)
    assert_problem(problems, path, line_of(text, needle), field, fragment)


def test_the_cli_exits_2_with_one_line_naming_the_field(tmp_path):
    text = MODELS.replace("artifact_dir: /shared/mlflow", "artifact_dir: /var/lib/mlflow")
    path = _write(tmp_path, text)
    proc = subprocess.run([sys.executable, "-m", "podsys.cli.main", "validate", str(path)], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"error: {path}:{line_of(text, 'artifact_dir: /var/lib/mlflow')}: models.artifact_dir: " in proc.stderr
    assert HASH not in proc.stderr + proc.stdout


def test_the_layer_is_catalogued_with_its_roles_and_smoke_test():
    info = layer_info("models")
    assert info.kind == "add-on" and info.section == "models" and "models" in info.roles
    assert (REPO_ROOT / info.smoke).is_file()
    assert "test_the_training_job_registers_its_model_in_mlflow" in (REPO_ROOT / info.smoke).read_text()


def _template(name: str, **variables) -> str:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(ROLE / "templates"), trim_blocks=True,
                             keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
    return env.get_template(name).render(**variables)


def _role_vars(cluster) -> dict:
    models = _vars(cluster)[0]["podsys_models"]
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    plain = {k: v for k, v in defaults.items() if not (isinstance(v, str) and "{{" in v)}
    return {**plain, "models_https_port": models["https_port"], "models_mlflow_port": models["mlflow_port"],
            "models_trusted_networks": models["trusted_networks"], "models_allowed_hosts": models["allowed_hosts"],
            "models_cors_origins": models["cors_origins"], "models_artifact_dir": models["artifact_dir"],
            "models_password_file": "/etc/podsys/models/db-password",
            "models_environment_file": "/etc/podsys/models/mlflow.env",
            "models_htpasswd_file": "/etc/nginx/podsys-models.htpasswd",
            "models_nginx_site": "/etc/nginx/sites-enabled/podsys-models.conf",
            "models_password_hashes": {"bob": "$6$b$x", "alice": HASH}}


def test_the_htpasswd_file_has_one_line_per_user_with_a_hash(cluster):
    text = _template("htpasswd.j2", **_role_vars(cluster))
    assert text == f"alice:{HASH}\nbob:$6$b$x\n"


def test_nginx_lets_the_provision_network_in_and_asks_everyone_else_to_log_in(cluster):
    text = _template("nginx-models.conf.j2", **_role_vars(cluster))
    assert "listen 5443 ssl;" in text and "proxy_pass http://127.0.0.1:5000;" in text
    network = str(cluster.manifest.networks.provision.cidr)
    order = [l.strip() for l in text.splitlines() if l.strip().startswith(("satisfy", "allow", "deny", "auth_basic"))]
    assert order == ["satisfy any;", f"allow {network};", "deny all;", 'auth_basic "podsys models";',
                     "auth_basic_user_file /etc/nginx/podsys-models.htpasswd;"]


@pytest.mark.skipif(not Path("/usr/sbin/nginx").exists(), reason="nginx not installed (Debian package nginx)")
def test_nginx_accepts_the_server_file(cluster, tmp_path):
    """`nginx -t` on a configuration holding the rendered server (with a throwaway certificate)."""
    key, crt = tmp_path / "k.pem", tmp_path / "c.pem"
    made = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=t",
                           "-keyout", str(key), "-out", str(crt)], capture_output=True)
    assert made.returncode == 0
    server = _template("nginx-models.conf.j2", **{**_role_vars(cluster), "models_tls_certificate": str(crt),
                                                 "models_tls_key": str(key),
                                                 "models_htpasswd_file": str(tmp_path / "htpasswd")})
    conf = tmp_path / "nginx.conf"
    conf.write_text(f"pid {tmp_path}/nginx.pid; error_log {tmp_path}/error.log;\nevents {{}}\n"
                    f"http {{ access_log off; {server} }}\n")
    check = subprocess.run(["/usr/sbin/nginx", "-t", "-c", str(conf), "-p", str(tmp_path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    conf.write_text(conf.read_text().replace("satisfy any;", "satisfy whichever;"))
    assert subprocess.run(["/usr/sbin/nginx", "-t", "-c", str(conf), "-p", str(tmp_path)], capture_output=True).returncode != 0


def test_the_service_listens_on_loopback_with_the_secret_in_its_environment_file(cluster):
    unit = _template("mlflow.service.j2", **_role_vars(cluster))
    assert "EnvironmentFile=/etc/podsys/models/mlflow.env" in unit
    assert "--host 127.0.0.1 --port 5000" in unit and "--artifacts-destination /shared/mlflow" in unit
    assert "mysql" not in unit  # the backend URI (with its password) is only in the 0600 environment file
    env = _template("mlflow.env.j2", **_role_vars(cluster), models_db_password="PW")
    assert "MLFLOW_BACKEND_STORE_URI=mysql+pymysql://mlflow:PW@localhost/mlflow" in env


# --- `podsys models list`: the collector against recorded answers ------------------------------


def _recorded(path: str, params: dict) -> dict:
    """The recorded answer for a request (max_results does not select one: the recording used 1
    for the paged search and 100 for the rest)."""
    if path.endswith("/registered-models/search"):
        name = "registered-models-search-page2.json" if params.get("page_token") else "registered-models-search-page1.json"
    elif path.endswith("/model-versions/search"):
        model = re.fullmatch(r"name='(.+)'", params["filter"]).group(1)
        name = f"model-versions-search-{model}.json"
    elif path.endswith("/runs/get"):
        name = f"runs-get-{params['run_id']}.json"
    else:
        raise AssertionError(path)
    return json.loads((FIXTURES / name).read_text())


def test_the_collector_follows_pages_and_gathers_every_version_and_run():
    requests = []

    def get(path, params):
        requests.append((path, dict(params)))
        return _recorded(path, params)

    collected = mlflow_rest.collect(get, page_size=1)
    assert [m["name"] for m in collected["models"]] == ["tiny_regressor", "train_ddp"]
    assert requests[1][1]["page_token"] == json.loads((FIXTURES / "registered-models-search-page1.json").read_text())["next_page_token"]
    assert [v["version"] for v in collected["versions"]["train_ddp"]] == ["2", "1"]
    assert len(collected["runs"]) == 3 and sum(p.endswith("/runs/get") for p, _ in requests) == 3


def test_rows_name_each_version_its_run_and_its_last_metrics():
    rows = model_versions(mlflow_rest.collect(_recorded, page_size=1))
    assert [(r.name, r.version) for r in rows] == [("tiny_regressor", 1), ("train_ddp", 1), ("train_ddp", 2)]
    first = rows[1]
    assert (first.status, first.stage, first.run_name, first.user) == ("READY", "None", "train-42", "root")
    assert first.run_id == "cfd92aac32434123b366a0102a4e8e30" and first.metrics == {"loss": 0.1}
    assert first.created == "2026-11-29 04:19"
    assert format_metrics({"loss": 0.1, "acc": 0.95}) == "acc=0.95 loss=0.1"


def test_an_empty_registry_gives_no_rows():
    empty = json.loads((FIXTURES / "registered-models-search-empty.json").read_text())
    assert empty == {}
    assert model_versions(mlflow_rest.collect(lambda path, params: empty)) == []


def test_a_model_without_versions_still_shows():
    page = json.loads((FIXTURES / "registered-models-search-page1.json").read_text())
    page.pop("next_page_token")
    rows = model_versions(mlflow_rest.collect(lambda path, params: page if "registered" in path else {}))
    assert [(r.name, r.version, r.status) for r in rows] == [("tiny_regressor", 0, "no versions")]


class _Recorded(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        url = urllib.parse.urlsplit(self.path)
        params = dict(urllib.parse.parse_qsl(url.query))
        self.server.seen.append(url.path)
        body = json.dumps(_recorded(url.path, params)).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_the_collector_runs_as_a_standalone_script_over_http(tmp_path):
    """What `podsys models list` does on the head: the module's source on python3's stdin,
    the server's base URL as its argument, JSON on stdout."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorded)
    server.seen = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        proc = subprocess.run([sys.executable, "-", f"http://127.0.0.1:{server.server_port}"],
                              input=Path(mlflow_rest.__file__).read_bytes(), capture_output=True, timeout=60,
                              cwd=tmp_path)
    finally:
        server.shutdown()
    assert proc.returncode == 0, proc.stderr.decode()
    rows = model_versions(json.loads(proc.stdout))
    assert [(r.name, r.version) for r in rows] == [("tiny_regressor", 1), ("train_ddp", 1), ("train_ddp", 2)]
    assert server.seen[0] == "/api/2.0/mlflow/registered-models/search"


def test_models_list_refuses_a_cluster_without_the_layer(tmp_path):
    from tests.unit.manifest_samples import write_manifest
    path = write_manifest(tmp_path, ADDONS, MACS)
    proc = subprocess.run([sys.executable, "-m", "podsys.cli.main", "models", "list", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "layer 'models' is not enabled" in proc.stderr and "Traceback" not in proc.stderr
