#!/usr/bin/python3
"""Make Slurm's accounting database hold exactly the manifest's QOS, teams (accounts) and
their users, with sacctmgr. Idempotent: it reads the database first and runs only the
sacctmgr commands that change something, printing them as JSON ({"changes": [...]}).

Only what podsys created is ever removed: accounts and QOS whose description is marked
"podsys:" and user associations under those accounts. The database itself is never dropped.
Installed on the head by the accounting role; the pure planning (`plan`) is unit-tested by
tests/unit/addons/test_accounting.py against real `sacctmgr -nP` output."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

MARK = "podsys:"
LIMIT_KEYS = ("GrpJobs", "GrpSubmitJobs", "MaxWall")
# `sacctmgr show` field lists; the order is the column order of -P output.
QOS_FORMAT = ("Name", "Description", "Priority", "Preempt", "PreemptMode", "GrpTRES", "GrpJobs", "GrpSubmitJobs", "MaxWall")
ACCOUNT_FORMAT = ("Account", "Descr", "Org")
ASSOC_FORMAT = ("Account", "User", "Fairshare", "GrpTRES", "GrpJobs", "GrpSubmitJobs", "MaxWall", "QOS", "DefaultQOS")


def parse_rows(text: str, columns: tuple[str, ...]) -> list[dict[str, str]]:
    """`sacctmgr -nP` output: one '|'-separated row per line, no header."""
    rows = []
    for line in text.splitlines():
        if not line.strip():
            continue
        values = line.split("|")
        rows.append(dict(zip(columns, values + [""] * (len(columns) - len(values)))))
    return rows


def minutes(value: str) -> int | None:
    """Slurm time (minutes, m:s, h:m:s, d-h, d-h:m, d-h:m:s) -> whole minutes; '' -> None."""
    value = value.strip()
    if not value or value.upper() in ("UNLIMITED", "INFINITE"):
        return None
    days = 0
    if "-" in value:
        day_part, value = value.split("-", 1)
        days = int(day_part)
        parts = [int(p) for p in value.split(":")] + [0, 0]
        hours, mins, secs = parts[0], parts[1], parts[2]
    else:
        parts = [int(p) for p in value.split(":")]
        if len(parts) == 1:
            hours, mins, secs = 0, parts[0], 0
        elif len(parts) == 2:
            hours, mins, secs = 0, parts[0], parts[1]
        else:
            hours, mins, secs = parts
    return days * 1440 + hours * 60 + mins + (1 if secs else 0)


def tres(value: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in value.split(",") if "=" in item)


def names(value: str) -> set[str]:
    return {v for v in value.split(",") if v}


def _limit_settings(want: dict, have: dict | None) -> list[str]:
    """`Key=value` settings turning `have` into `want` for GrpTRES, GrpJobs, GrpSubmitJobs,
    MaxWall; -1 clears a limit (sacctmgr(1))."""
    out = []
    want_tres, have_tres = tres(want.get("GrpTRES", "")), tres((have or {}).get("GrpTRES", ""))
    changed = {k: v for k, v in want_tres.items() if have_tres.get(k) != v}
    cleared = {k: "-1" for k in have_tres if k not in want_tres} if have is not None else {}
    if changed or cleared:
        out.append("GrpTRES=" + ",".join(f"{k}={v}" for k, v in {**changed, **cleared}.items()))
    for key in LIMIT_KEYS:
        w = want.get(key, "")
        h = (have or {}).get(key, "")
        same = minutes(w) == minutes(h) if key == "MaxWall" else w == h
        if same:
            continue
        if w:
            out.append(f"{key}={w}")
        elif have is not None:
            out.append(f"{key}=-1")
    return out


def plan(desired: dict, qos_rows: list[dict], account_rows: list[dict], assoc_rows: list[dict]) -> list[list[str]]:
    """The sacctmgr argvs (without `sacctmgr -i`) that make the database match `desired`."""
    cluster = desired["cluster"]
    cmds: list[list[str]] = []
    have_qos = {r["Name"]: r for r in qos_rows}
    want_qos = {q["name"]: q for q in desired["qos"]}
    # QOS first (accounts name them), their preemption after all exist.
    for name, q in want_qos.items():
        have = have_qos.get(name)
        settings = [f"Description={MARK}{name}"] if have is None or have["Description"] != f"{MARK}{name}" else []
        if have is None or have["Priority"] != q["Priority"]:
            settings.append(f"Priority={q['Priority']}")
        if have is None or have["PreemptMode"].lower() != q["PreemptMode"].lower():
            settings.append(f"PreemptMode={q['PreemptMode']}")
        settings += _limit_settings(q, have)
        if have is None:
            cmds.append(["add", "qos", name, *settings])
        elif settings:
            cmds.append(["modify", "qos", "where", f"name={name}", "set", *settings])
    for name, q in want_qos.items():
        have = have_qos.get(name)
        if names(q["Preempt"]) != names(have["Preempt"] if have else ""):
            cmds.append(["modify", "qos", "where", f"name={name}", "set", f"Preempt={q['Preempt']}"])

    accounts = {r["Account"]: r for r in account_rows}
    account_assoc = {r["Account"]: r for r in assoc_rows if not r["User"]}
    user_assoc = {(r["Account"], r["User"]) for r in assoc_rows if r["User"]}
    want_teams = {t["name"]: t for t in desired["teams"]}
    for name, team in want_teams.items():
        descr = f"{MARK}{team['Description']}"
        have = account_assoc.get(name) if name in accounts else None
        if have is None:
            settings = [f"Cluster={cluster}", f"Description={descr}", "Organization=podsys",
                        f"Fairshare={team['Fairshare']}", f"QOS={team['QOS']}"]
            if team["DefaultQOS"]:
                settings.append(f"DefaultQOS={team['DefaultQOS']}")
            settings += _limit_settings(team, None)
            cmds.append(["add", "account", name, *settings])
        else:
            settings = []
            if accounts[name]["Descr"] != descr:
                settings.append(f"Description={descr}")
            if have["Fairshare"] != team["Fairshare"]:
                settings.append(f"Fairshare={team['Fairshare']}")
            if names(have["QOS"]) != names(team["QOS"]):
                settings.append(f"QOS={team['QOS']}")
            if have["DefaultQOS"] != team["DefaultQOS"]:
                settings.append(f"DefaultQOS={team['DefaultQOS'] or '-1'}")
            settings += _limit_settings(team, have)
            if settings:
                cmds.append(["modify", "account", "where", f"name={name}", f"cluster={cluster}", "set", *settings])
        for user in team["users"]:
            if (name, user) not in user_assoc:
                cmds.append(["add", "user", user, f"Account={name}", f"Cluster={cluster}"])
    ours = {a for a, r in accounts.items() if r["Descr"].startswith(MARK)}
    for account, user in sorted(user_assoc):
        if account in ours and (account not in want_teams or user not in want_teams[account]["users"]):
            cmds.append(["delete", "user", "where", f"name={user}", f"account={account}", f"cluster={cluster}"])
    for account in sorted(ours - set(want_teams)):
        cmds.append(["delete", "account", "where", f"name={account}", f"cluster={cluster}"])
    for name, have in sorted(have_qos.items()):
        if name not in want_qos and have["Description"].startswith(MARK):
            cmds.append(["delete", "qos", "where", f"name={name}"])
    return cmds


def sacctmgr(*args: str) -> str:
    proc = subprocess.run(["sacctmgr", "-i", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"sacctmgr {' '.join(args)}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


def read_database(cluster: str) -> tuple[list[dict], list[dict], list[dict]]:
    qos = parse_rows(sacctmgr("-nP", "show", "qos", "format=" + ",".join(QOS_FORMAT)), QOS_FORMAT)
    accounts = parse_rows(sacctmgr("-nP", "show", "account", "format=" + ",".join(ACCOUNT_FORMAT)), ACCOUNT_FORMAT)
    assocs = parse_rows(sacctmgr("-nP", "show", "assoc", "where", f"cluster={cluster}",
                                 "format=" + ",".join(ASSOC_FORMAT)), ASSOC_FORMAT)
    return qos, accounts, assocs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("state", help="desired state (JSON written by the accounting role)")
    parser.add_argument("--check", action="store_true", help="print what would change, change nothing")
    args = parser.parse_args()
    with open(args.state) as handle:
        desired = json.load(handle)
    changes = plan(desired, *read_database(desired["cluster"]))
    if not args.check:
        for argv in changes:
            sacctmgr(*argv)
    print(json.dumps({"changes": [" ".join(argv) for argv in changes]}))


if __name__ == "__main__":
    main()
