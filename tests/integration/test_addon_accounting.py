"""The `accounting` add-on on a lab of its own (head + 2 nodes): MariaDB and slurmdbd on the head,
Slurm enforcing a team's limits, sacctmgr applying the manifest idempotently, backup/restore.

* the database password is generated on the head (0600) and appears in no deploy output;
* a job over its team's CPU limit stays pending with Slurm's limit reason, one within it runs
  and `sacct` shows it;
* a second deploy changes nothing; dropping a user from the manifest removes its association
  and keeps the job records;
* `podsys accounting backup` dumps the database; after an account is deleted by hand,
  `podsys accounting restore` brings it back, and the job records survive."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import podsys, write_manifest_variant
from tests.integration.conftest import deploy_json, own_lab, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.lab]

TEAM = "vision"
USER, INTERN = "researcher", "intern"


def write_variant(lab, name: str, users: list[str]) -> Path:
    accounts = {
        "qos": [{"name": "high", "priority": 100, "preempt": ["low"], "preempt_mode": "requeue"},
                {"name": "low", "priority": 0}],
        "teams": [{"name": TEAM, "description": "computer vision", "fairshare": 10, "users": users,
                   "limits": {"cpus": 1}, "qos": ["normal", "high", "low"], "default_qos": "normal"}],
    }
    return write_manifest_variant(lab.manifest.parent, lab.manifest, name, layers=["base", "slurm", "accounting"],
                                  users=[{"name": USER, "uid": 2001, "gid": 2001}, {"name": INTERN, "uid": 2002, "gid": 2002}],
                                  accounts=accounts)


@pytest.fixture(scope="module")
def accounting_lab(tmp_path_factory):
    with own_lab(tmp_path_factory, "acctlab", 2) as lab:
        manifest = write_variant(lab, "lab-accounting", [USER, INTERN])
        first = deploy_json(manifest)
        yield lab, manifest, first


def sacctmgr(lab, *args) -> list[list[str]]:
    out = lab.ssh(lab.head, ["sacctmgr", "-nP", *args]).stdout
    return [line.split("|") for line in out.splitlines() if line.strip()]


def test_first_deploy_brings_up_mariadb_and_slurmdbd_and_keeps_the_password_private(accounting_lab):
    lab, _, first = accounting_lab
    assert first["succeeded"], first["_output"][-3000:]
    for service in ("mariadb", "slurmdbd", "slurmctld"):
        assert lab.ssh(lab.head, f"systemctl is-active {service}").stdout.strip() == "active", service
    stat = lab.ssh(lab.head, "stat -c '%a %U' /etc/podsys/accounting/db-password /etc/slurm/slurmdbd.conf").stdout.split("\n")
    assert stat[0] == "600 root" and stat[1] == "600 slurm", stat
    password = lab.ssh(lab.head, "cat /etc/podsys/accounting/db-password").stdout.strip()
    assert len(password) >= 32
    assert password not in first["_output"]
    logs = lab.manifest.parent / ".podsys" / "build" / "logs"
    for log in logs.rglob("*"):
        if log.is_file():
            assert password not in log.read_text(errors="replace"), log
    config = {key.strip(): value.strip() for key, _, value in
              (line.partition("=") for line in lab.ssh(lab.head, "scontrol show config").stdout.splitlines())}
    assert config["AccountingStorageType"] == "accounting_storage/slurmdbd"
    assert config["AccountingStorageEnforce"] == "associations,limits,qos"


def test_manifest_teams_users_and_qos_are_in_the_database(accounting_lab):
    lab, _, _ = accounting_lab
    assocs = sacctmgr(lab, "show", "assoc", "where", f"account={TEAM}", "format=account,user,fairshare,grptres,qos")
    users = {row[1] for row in assocs if row[1]}
    assert users == {USER, INTERN}
    team_row = next(row for row in assocs if not row[1])
    assert team_row[2] == "10" and team_row[3] == "cpu=1" and set(team_row[4].split(",")) == {"normal", "high", "low"}
    qos = {row[0]: row for row in sacctmgr(lab, "show", "qos", "format=name,priority,preempt")}
    assert qos["high"][1] == "100" and qos["high"][2] == "low"


def _job_state(lab, job: str) -> tuple[str, str]:
    out = lab.ssh(lab.head, ["squeue", "-h", "-j", job, "-o", "%T|%r"], check=False).stdout.strip()
    return tuple(out.split("|")) if out else ("GONE", "")


def test_over_limit_job_pends_with_the_limit_reason_and_a_job_within_it_runs(accounting_lab):
    lab, _, _ = accounting_lab
    submit = f"su - {USER} -c 'sbatch --parsable -A {TEAM} -o /dev/null -n {{n}} --wrap \"sleep {{s}}\"'"
    over = lab.ssh(lab.head, submit.format(n=2, s=5)).stdout.strip().split(";")[0]
    within = lab.ssh(lab.head, submit.format(n=1, s=3)).stdout.strip().split(";")[0]
    state, reason = wait_for("the over-limit job pending with a reason",
                             lambda: (lambda s: s if s[0] == "PENDING" and s[1] not in ("", "None") else None)(
                                 _job_state(lab, over)), timeout=60)
    assert reason == "AssocGrpCpuLimit", (state, reason)
    wait_for("the job within the limit to finish", lambda: _job_state(lab, within)[0] == "GONE", timeout=180)
    assert _job_state(lab, over) == ("PENDING", "AssocGrpCpuLimit")
    lab.ssh(lab.head, ["scancel", over])

    def recorded():
        rows = lab.ssh(lab.head, ["sacct", "-nP", "-X", "-j", within, "--format=jobid,user,account,state"]).stdout.split()
        return rows and rows[0].split("|")
    row = wait_for("sacct to show the finished job", recorded, timeout=60)
    assert row == [within, USER, TEAM, "COMPLETED"], row


def test_a_second_deploy_changes_nothing(accounting_lab):
    lab, manifest, _ = accounting_lab
    again = deploy_json(manifest)
    assert again["succeeded"], again["_output"][-3000:]
    changed = {h["name"]: h["changed"] for h in again["hosts"] if h["changed"]}
    assert not changed, changed


def test_removing_a_user_removes_its_association_and_keeps_the_records(accounting_lab):
    lab, _, _ = accounting_lab
    jobs_before = lab.ssh(lab.head, ["sacct", "-nP", "-X", "-a", "-S", "2020-01-01", "--format=jobid"]).stdout.split()
    assert jobs_before
    smaller = write_variant(lab, "lab-accounting-smaller", [USER])
    result = deploy_json(smaller)
    assert result["succeeded"], result["_output"][-3000:]
    users = {row[1] for row in sacctmgr(lab, "show", "assoc", "where", f"account={TEAM}", "format=account,user") if row[1]}
    assert users == {USER}
    jobs_after = lab.ssh(lab.head, ["sacct", "-nP", "-X", "-a", "-S", "2020-01-01", "--format=jobid"]).stdout.split()
    assert jobs_after == jobs_before


def test_backup_and_restore_bring_back_a_deleted_account(accounting_lab, tmp_path):
    lab, _, _ = accounting_lab
    manifest = lab.manifest.with_name("lab-accounting-smaller.yaml")
    dump = tmp_path / "accounting.sql"
    backup = podsys("accounting", "backup", manifest, "--output", dump, timeout=600)
    assert backup.returncode == 0, backup.stderr
    assert oct(dump.stat().st_mode & 0o777) == "0o600"
    text = dump.read_text()
    assert ("-- MariaDB dump" in text[:512] or "-- MySQL dump" in text[:512]) and "CREATE TABLE" in text and "INSERT INTO" in text
    jobs_before = lab.ssh(lab.head, ["sacct", "-nP", "-X", "-a", "-S", "2020-01-01", "--format=jobid"]).stdout.split()

    lab.ssh(lab.head, ["sacctmgr", "-i", "delete", "user", "where", f"name={USER}", f"account={TEAM}"])
    lab.ssh(lab.head, ["sacctmgr", "-i", "delete", "account", TEAM])
    assert not sacctmgr(lab, "show", "account", "where", f"name={TEAM}", "format=account")

    restored = podsys("accounting", "restore", manifest, "--input", dump, timeout=600)
    assert restored.returncode == 0, restored.stderr
    assert [row[0] for row in sacctmgr(lab, "show", "account", "where", f"name={TEAM}", "format=account")] == [TEAM]
    users = {row[1] for row in sacctmgr(lab, "show", "assoc", "where", f"account={TEAM}", "format=account,user") if row[1]}
    assert users == {USER}
    jobs_after = lab.ssh(lab.head, ["sacct", "-nP", "-X", "-a", "-S", "2020-01-01", "--format=jobid"]).stdout.split()
    assert jobs_after == jobs_before
