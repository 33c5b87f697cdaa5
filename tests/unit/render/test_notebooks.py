"""The `notebooks` layer and the `web` section: bad input names file, line and field (exit 2 from
the CLI, no traceback, no hash echoed); a good manifest renders the variables web_tls and the
notebooks role read, the hashes only in the 0600 secrets file; the role's jupyterhub_config.py
template renders to Python that compiles and says what the layer promises (PAM, the manifest's
users, batchspawner on Slurm, loopback proxy, the hub API off provisioning's port)."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import jinja2
import pytest
import yaml

from podsys.cluster.load import load_cluster
from podsys.bundle.addon_wheels import wheel_sets
from podsys.errors import InputError
from podsys.layout import FIXED_HEAD_PORTS, JUPYTERHUB_API_PORT, NOTEBOOKS_HEAD_PORTS
from podsys.render.build import SECRETS_FILE, VARS_FILE, render_files
from tests.unit.manifest_samples import MACS, VALID, assert_problem, line_of, write_manifest, write_model_wheels
from tests.conftest import REPO_ROOT

ROLE = REPO_ROOT / "podsys" / "playbooks" / "roles" / "notebooks"
# `openssl passwd -6 -salt podsys secret` (a test hash; the password is not used anywhere).
HASH = "$6$podsys$w74JlhJTMgueptXv4Gxl/b66Nx03JF4vXK1OlD0nTL8/aId6cl8j8Ov8tDNFThIYXTYM84/yeLvc8z3GXtR6m/"

NOTEBOOKS = VALID.replace("layers: [base, gpu, infiniband, slurm, monitoring]",
                          "layers: [base, gpu, infiniband, slurm, monitoring, storage, notebooks]")
NOTEBOOKS = re.sub(
    r"^users: .*\n",
    f"""users:
  - {{name: alice, uid: 2001, password_hash: '{HASH}'}}
  - {{name: bob, uid: 2002}}
storage:
  mounts: [{{kind: nfs, source: "nas01:/export/home", path: /shared}}]
  home: /shared/home
notebooks:
  partition: gpu
  cpus: 4
  gpus: 1
  time: "4:00:00"
""", NOTEBOOKS, count=1, flags=re.MULTILINE)


# The wheel file the role defaults' pin (notebooks_wheel_requirements) names.
BATCHSPAWNER_WHEEL = "batchspawner-{}-py3-none-any.whl".format(wheel_sets(["notebooks"])[0].requirements[0].split("==")[1])


def write(tmp_path: Path, text: str = NOTEBOOKS, wheel: bool = True) -> Path:
    path = write_manifest(tmp_path, text, MACS)
    if wheel:
        (tmp_path / "wheelhouse").mkdir(exist_ok=True)
        (tmp_path / "wheelhouse" / BATCHSPAWNER_WHEEL).write_bytes(b"PK")
    return path


def problems_for(path: Path):
    with pytest.raises(InputError) as info:
        load_cluster(path)
    return info.value.problems


def test_the_layer_renders_the_roles_variables_and_keeps_hashes_secret(tmp_path):
    cluster = load_cluster(write(tmp_path))
    files = render_files(cluster)
    all_vars = yaml.safe_load(files[VARS_FILE])
    nb = all_vars["podsys_notebooks"]
    assert nb["users"] == ["alice"]  # bob has no password hash: no web login
    assert nb["home_parent"] == "/shared/home"
    assert (nb["partitions"], nb["partition"], nb["cpus"], nb["gpus"], nb["time"]) == (["gpu"], "gpu", 4, 1, "4:00:00")
    assert nb["wheelhouse"] == str(tmp_path / "wheelhouse")
    assert nb["hub_address"] == "10.10.0.1" and nb["hub_api_port"] == JUPYTERHUB_API_PORT
    web = all_vars["podsys_web"]
    assert web == {"tls_certificate_file": None, "tls_key_file": None, "hostname": "mu01", "address": "10.10.0.1",
                   "alt_names": ["DNS:mu01", "DNS:mu01.cluster.local", "IP:10.10.0.1"]}
    assert HASH not in files[VARS_FILE]
    secrets = yaml.safe_load(files[SECRETS_FILE])["podsys_secrets"]
    assert secrets["user_password_hashes"] == {"alice": HASH}


def test_the_partition_defaults_to_slurms_default(tmp_path):
    cluster = load_cluster(write(tmp_path, NOTEBOOKS.replace("  partition: gpu\n", "")))
    assert yaml.safe_load(render_files(cluster)[VARS_FILE])["podsys_notebooks"]["partition"] == "gpu"


def test_a_manifest_certificate_is_handed_over_as_paths_never_as_content(tmp_path):
    (tmp_path / "tls").mkdir()
    (tmp_path / "tls" / "site.crt").write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    key = "-----BEGIN PRIVATE KEY-----\nSECRETKEYMATERIAL\n-----END PRIVATE KEY-----\n"
    (tmp_path / "tls" / "site.key").write_text(key)
    text = NOTEBOOKS + "web: {tls_certificate_file: tls/site.crt, tls_key_file: tls/site.key}\n"
    files = render_files(load_cluster(write(tmp_path, text)))
    web = yaml.safe_load(files[VARS_FILE])["podsys_web"]
    assert web["tls_certificate_file"] == str(tmp_path / "tls" / "site.crt")
    assert web["tls_key_file"] == str(tmp_path / "tls" / "site.key")
    assert not any("SECRETKEYMATERIAL" in text for text in files.values())


def test_without_the_layer_nothing_web_is_rendered(tmp_path):
    all_vars = yaml.safe_load(render_files(load_cluster(write_manifest(tmp_path)))[VARS_FILE])
    assert "podsys_web" not in all_vars and "podsys_notebooks" not in all_vars


def test_the_hub_ports_are_free_on_the_head():
    assert not set(NOTEBOOKS_HEAD_PORTS) & set(FIXED_HEAD_PORTS)
    assert JUPYTERHUB_API_PORT != 8081  # provisioning.status_port's default


# (what to replace, with what, the line holding it, the field, a fragment of the message)
BAD = [
    ("  cpus: 4", "  cpus: 0", "cpus: 0", "notebooks.cpus", "greater than or equal to 1"),
    ("  gpus: 1", "  gpus: -1", "gpus: -1", "notebooks.gpus", "greater than or equal to 0"),
    ('  time: "4:00:00"', "  time: four hours", "time: four hours", "notebooks.time", ""),
    ("  partition: gpu", "  partition: cpu", "partition: cpu", "notebooks.partition", "not in slurm.partitions"),
    ("  partition: gpu", "  partition: gpu\n  prtition: x", "prtition: x", "notebooks.prtition", "unknown key"),
    ("  home: /shared/home\n", "", "storage:", "storage.home", "needs storage.home"),
    ("storage, notebooks]", "notebooks]", "layers:", "layers", "needs layer 'storage'"),
    ("slurm, monitoring, storage, notebooks]", "monitoring, storage, notebooks]", "layers:", "layers",
     "needs layer 'slurm'"),
    (f", password_hash: '{HASH}'", "", "users:", "users", "give at least one user one"),
    (f"password_hash: '{HASH}'", "password_hash: hunter2", "password_hash: hunter2", "users[0].password_hash",
     "is not a crypt(3) hash"),
]


@pytest.mark.parametrize("old,new,needle,field,fragment", BAD, ids=[b[3] + ":" + b[1].strip()[:20] for b in BAD])
def test_bad_notebooks_input_names_file_line_and_field(tmp_path, old, new, needle, field, fragment):
    assert old in NOTEBOOKS
    text = NOTEBOOKS.replace(old, new, 1)
    path = write(tmp_path, text)
    assert_problem(problems_for(path), path, line_of(text, needle), field, fragment)


def test_a_missing_wheel_is_named_with_the_command_that_fetches_it(tmp_path):
    path = write(tmp_path, wheel=False)
    assert_problem(problems_for(path), path, line_of(NOTEBOOKS, "notebooks:"), "notebooks.wheelhouse",
                   "pip download --no-deps batchspawner==1.3.0")


def test_provisioning_cannot_take_the_hub_api_port(tmp_path):
    text = NOTEBOOKS + f"provisioning: {{status_port: {JUPYTERHUB_API_PORT}}}\n"
    path = write(tmp_path, text)
    assert_problem(problems_for(path), path, line_of(text, "provisioning:"), "provisioning.status_port",
                   "the JupyterHub API")


def test_every_name_users_reach_the_head_by_is_a_san_and_an_allowed_mlflow_host(tmp_path):
    text = NOTEBOOKS.replace("layers: [base, gpu, infiniband, slurm, monitoring, storage, notebooks]",
                             "layers: [base, gpu, infiniband, slurm, monitoring, storage, accounting, notebooks, models]")
    text = re.sub(r"^(head: .*)address: 10.10.0.1", r"\1address: 10.10.0.1, ssh_address: 192.0.2.7", text, count=1, flags=re.M)
    assert "ssh_address: 192.0.2.7" in text
    text += "web: {names: [ai.example.org, 198.51.100.4, mu01]}\n"
    write_model_wheels(tmp_path)
    all_vars = yaml.safe_load(render_files(load_cluster(write(tmp_path, text)))[VARS_FILE])
    assert all_vars["podsys_web"]["alt_names"] == ["DNS:mu01", "DNS:mu01.cluster.local", "IP:10.10.0.1",
                                                   "IP:192.0.2.7", "DNS:ai.example.org", "IP:198.51.100.4"]
    allowed = all_vars["podsys_models"]["allowed_hosts"]
    for name in ("ai.example.org", "198.51.100.4", "192.0.2.7", "mu01"):
        assert {name, f"{name}:*"} <= set(allowed), allowed
    assert "https://ai.example.org:5443" in all_vars["podsys_models"]["cors_origins"]


@pytest.mark.parametrize("names", ["[bad_name!]", "[-lead.example.org]", "[Example.ORG]"])
def test_a_web_name_that_is_no_dns_name_or_address_names_the_field(tmp_path, names):
    text = NOTEBOOKS + f"web: {{names: {names}}}\n"
    path = write(tmp_path, text)
    assert_problem(problems_for(path), path, line_of(text, "web:"), "web.names[0]", "")


@pytest.mark.parametrize("web,field,fragment", [
    ("{tls_certificate_file: tls/site.crt}", "web.tls_key_file", "give both"),
    ("{tls_certificate_file: tls/none.crt, tls_key_file: tls/site.key}", "web.tls_certificate_file", "does not exist"),
    ("{tls_certificate_file: tls/site.key, tls_key_file: tls/site.key}", "web.tls_certificate_file", "no PEM certificate"),
])
def test_bad_web_section_names_the_field(tmp_path, web, field, fragment):
    (tmp_path / "tls").mkdir()
    (tmp_path / "tls" / "site.key").write_text("-----BEGIN PRIVATE KEY-----\nx\n-----END PRIVATE KEY-----\n")
    text = NOTEBOOKS + f"web: {web}\n"
    path = write(tmp_path, text)
    assert_problem(problems_for(path), path, line_of(text, "web:"), field, fragment)


def test_the_cli_exits_2_with_one_line_no_traceback_and_no_hash(tmp_path):
    text = NOTEBOOKS.replace("  partition: gpu", "  partition: cpu", 1)
    path = write(tmp_path, text)
    proc = subprocess.run([sys.executable, "-m", "podsys.cli.main", "validate", str(path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and HASH not in proc.stdout + proc.stderr
    assert f"{path}:{line_of(text, 'partition: cpu')}" in proc.stdout + proc.stderr


def render_hub_config(all_vars: dict) -> str:
    """The role's jupyterhub_config.py.j2 with the role defaults resolved from render's
    variables, as Ansible would (the filters it uses are plain Jinja2 plus to_json)."""
    import json

    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    env.filters["to_json"] = json.dumps
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    context = {**all_vars, "podsys_secrets": {}, "podsys_head": {"address": "10.10.0.1"}}
    for name, value in defaults.items():
        context[name] = env.from_string(value).render(context) if isinstance(value, str) else value
        if isinstance(value, str) and value.startswith("{{") and isinstance(all_vars["podsys_notebooks"].get(
                name.removeprefix("notebooks_")), (list, int)):
            context[name] = all_vars["podsys_notebooks"][name.removeprefix("notebooks_")]
    return env.from_string((ROLE / "templates" / "jupyterhub_config.py.j2").read_text()).render(context)


def test_the_hub_config_template_renders_valid_python_with_the_layers_settings(tmp_path):
    all_vars = yaml.safe_load(render_files(load_cluster(write(tmp_path)))[VARS_FILE])
    config = render_hub_config(all_vars)
    ast.parse(config)
    assert 'USERS = ["alice"]' in config
    assert 'HOME_PARENT = "/shared/home"' in config and 'PARTITIONS = ["gpu"]' in config
    assert '"cpus": 4' in config and '"gpus": 1' in config and '"time": "4:00:00"' in config
    assert 'c.JupyterHub.bind_url = "http://127.0.0.1:8000/"' in config
    assert f'c.JupyterHub.hub_bind_url = "http://10.10.0.1:{JUPYTERHUB_API_PORT}"' in config
    assert 'c.JupyterHub.authenticator_class = "pam"' in config
    assert "c.JupyterHub.spawner_class = PodsysSlurmSpawner" in config
    assert HASH not in config


def test_the_spawn_form_is_validated_before_anything_reaches_sbatch(tmp_path):
    """The config's form handling, run for real: batchspawner and traitlets are stood in by
    minimal classes (the hub's packages are not installed here), the form logic is the template's."""
    all_vars = yaml.safe_load(render_files(load_cluster(write(tmp_path)))[VARS_FILE])
    config = render_hub_config(all_vars)
    config = config.replace("from batchspawner import SlurmSpawner", "class SlurmSpawner: pass")
    config = config.replace("from traitlets import default", "default = lambda name: (lambda f: f)")
    config = config.replace("c = get_config()", "import types; c = types.SimpleNamespace()")
    config = re.sub(r"^c\..*$", "", config, flags=re.MULTILINE)
    namespace: dict = {}
    exec(compile(config, "jupyterhub_config.py", "exec"), namespace)
    spawner = namespace["PodsysSlurmSpawner"]()
    ok = spawner.options_from_form({"partition": ["gpu"], "cpus": ["2"], "gpus": ["1"], "time": ["1-00:00:00"]})
    assert ok == {"partition": "gpu", "nprocs": "2", "gres": "gpu:1", "runtime": "1-00:00:00"}
    assert spawner.options_from_form({})["gres"] == "gpu:1"  # the manifest's defaults
    for bad in ({"partition": ["cpu"]}, {"cpus": ["0"]}, {"gpus": ["65"]}, {"time": ["8h; rm -rf /"]}):
        with pytest.raises(ValueError):
            spawner.options_from_form(bad)


def test_deploy_finds_the_fingerprint_web_tls_reported(tmp_path):
    from podsys.deploy.fingerprint import site_fingerprint, site_fingerprint_line

    fingerprint = ":".join(["AB"] * 31 + ["0F"])
    # ansible-playbook's default callback prints a debug task's msg like this.
    log = ('TASK [web_tls : Show the site certificate\'s fingerprint] ****\nok: [head] => {\n'
           f'    "msg": "site certificate SHA-256 fingerprint: {fingerprint}"\n}}\n')
    assert site_fingerprint(log) == fingerprint
    assert site_fingerprint("TASK [base : hostname] ****\nok: [head]\n") is None
    (tmp_path / "deploy.log").write_text(log)
    assert site_fingerprint_line(tmp_path / "deploy.log") == f"site certificate SHA-256 fingerprint: {fingerprint}"
    assert site_fingerprint_line(tmp_path / "missing.log") is None
