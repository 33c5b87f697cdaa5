"""Runs the deploy playbook with ansible-runner and turns its event stream into live progress,
a per-host summary, logs and a resume record.

Pure parts (event tracking, failure reasons, --limit/--resume resolution, ansible.cfg text) are
separate from the side effects (the lock, the ansible-runner call, files in the build dir) so
they can be tested without Ansible or hosts."""

from __future__ import annotations

import datetime as _dt
import fcntl
import hashlib
import json
import os
import re
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping

import yaml
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from podsys.cluster.selection import select_names
from podsys.errors import PodsysError
from podsys.layout import build_logs_dir, deploy_state_file

SITE_PLAYBOOK = "site.yml"

# Host states, in the order a summary sorts them (worst first).
FAILED, UNREACHABLE, OK = "failed", "unreachable", "ok"


# ----------------------------------------------------------------------------- options


@dataclass(frozen=True)
class DeployOptions:
    limit: str | None = None  # Slurm-style hostlist, e.g. "head,node[1-3]"
    tags: str | None = None
    check: bool = False
    forks: int = 20
    resume: bool = False
    verbosity: int = 0


def playbooks_dir() -> Path:
    """Where site.yml and roles/ live: $PODSYS_PLAYBOOKS_DIR, else the package's own copy
    (package data, so a wheel installed offline on a head node deploys too)."""
    override = os.environ.get("PODSYS_PLAYBOOKS_DIR")
    path = Path(override) if override else Path(__file__).resolve().parents[1] / "playbooks"
    if not (path / SITE_PLAYBOOK).is_file():
        raise PodsysError(f"playbooks not found: {path / SITE_PLAYBOOK} (set PODSYS_PLAYBOOKS_DIR)")
    return path


def inventory_hosts(inventory_file: Path) -> list[str]:
    """Every host name in a YAML inventory, in first-seen order."""
    data = yaml.safe_load(inventory_file.read_text()) or {}
    seen: dict[str, None] = {}

    def walk(group: Mapping) -> None:
        for name in (group.get("hosts") or {}):
            seen.setdefault(str(name), None)
        for child in (group.get("children") or {}).values():
            walk(child or {})

    for group in data.values():
        walk(group or {})
    return list(seen)


def hosts_to_resume(state: Mapping) -> list[str]:
    """Hosts whose last recorded result was failed or unreachable."""
    return [name for name, rec in (state.get("hosts") or {}).items() if rec.get("status") in (FAILED, UNREACHABLE)]


def select_hosts(options: DeployOptions, known: list[str], state: Mapping) -> list[str] | None:
    """The hosts to run on, or None for all. --resume narrows to last run's failures, then
    --limit (if given) narrows further."""
    selected: list[str] | None = None
    if options.resume:
        selected = [h for h in hosts_to_resume(state) if h in known]
    if options.limit is not None:
        limited = select_names(options.limit, known, "--limit")
        selected = limited if selected is None else [h for h in selected if h in limited]
    return selected


# ----------------------------------------------------------------------------- ansible.cfg


def control_path_dir(build_dir: Path) -> Path:
    """SSH master sockets per cluster: with Ansible's shared default (~/.ansible/cp), two clusters
    whose heads have the same name and user can reuse each other's connection. Kept short (a
    hash, not the build path) because a Unix socket path may not exceed 107 bytes."""
    digest = hashlib.sha1(str(build_dir.resolve()).encode()).hexdigest()[:12]
    return Path.home() / ".ansible" / "cp" / f"podsys-{digest}"


def ansible_cfg_text(build_dir: Path, roles_dir: Path, forks: int) -> str:
    """ansible.cfg for a deploy: SSH pipelining + ControlPersist for speed, a persistent fact
    cache (slurm.conf needs every node's CPUs/memory even when one node is unreachable), and
    host key checking on."""
    return f"""\
# Written by podsys deploy; regenerated on every run.
[defaults]
inventory = {build_dir / 'inventory'}
roles_path = {roles_dir}
forks = {forks}
host_key_checking = True
gathering = implicit
gather_subset = !all,!facter,!ohai,hardware,virtual
gather_timeout = 30
fact_caching = jsonfile
fact_caching_connection = {build_dir / 'facts'}
fact_caching_timeout = 0
retry_files_enabled = False
interpreter_python = auto_silent
timeout = 15
any_errors_fatal = False

[ssh_connection]
pipelining = True
control_path_dir = {control_path_dir(build_dir)}
ssh_args = -o ControlMaster=auto -o ControlPersist=300s -o ServerAliveInterval=15 -o ServerAliveCountMax=3 -o ConnectTimeout=10
retries = 0
"""


# ----------------------------------------------------------------------------- events


SSH_CHATTER = re.compile(r"Warning: Permanently added [^\r\n]*")


def one_line(text: str, limit: int = 240) -> str:
    # ssh prefixes its real error with host key chatter.
    text = SSH_CHATTER.sub("", str(text))
    lines = [ln.strip() for ln in text.replace("\r", "\n").split("\n")]
    lines = [ln for ln in lines if ln]
    joined = lines[0] if lines else ""
    for ln in lines[1:]:
        # "...via ssh:" + "connect to host ..." reads as one sentence; other lines are separate.
        joined += (" " if joined.endswith(":") else " / ") + ln
    return joined if len(joined) <= limit else joined[: limit - 3] + "..."


def failure_reason(event_data: Mapping) -> str:
    """One line saying why a task failed or a host was unreachable."""
    res = event_data.get("res") or {}
    if isinstance(res, Mapping) and res.get("results") and not res.get("msg"):
        # Loop tasks: the first failed item carries the message.
        for item in res["results"]:
            if isinstance(item, Mapping) and item.get("failed"):
                res = item
                break
    detail = ""
    if isinstance(res, Mapping):
        for key in ("msg", "stderr", "module_stderr", "stdout", "module_stdout"):
            value = res.get(key)
            if value and str(value).strip():
                detail = str(value)
                break
    task = event_data.get("task") or ""
    role = event_data.get("role") or ""
    where = f"{role} : {task}" if role and not task.startswith(f"{role} :") else task
    return one_line(f"{where}: {detail}" if where else detail or "failed (no message)")


@dataclass
class HostProgress:
    name: str
    role: str = ""
    task: str = ""
    ok: int = 0
    changed: int = 0
    failed: int = 0
    skipped: int = 0
    unreachable: int = 0
    roles_done: list[str] = field(default_factory=list)
    changed_tasks: list[str] = field(default_factory=list)  # "role: task", to tell what a re-run changed
    play_role: str = ""  # the first role this host ran in the current play
    reason: str = ""
    status: str = "waiting"  # waiting | running | ok | failed | unreachable


@dataclass(frozen=True)
class HostResult:
    name: str
    status: str  # ok | failed | unreachable
    ok: int
    changed: int
    failed: int
    skipped: int
    unreachable: int
    reason: str = ""
    changed_tasks: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()  # the roles that finished on this host, in order


class EventTracker:
    """Folds ansible-runner events into per-host progress. Feed it every event dict."""

    def __init__(self, hosts: Iterable[str] = ()):
        self.hosts: dict[str, HostProgress] = {h: HostProgress(h) for h in hosts}
        self.stats: dict[str, dict[str, int]] | None = None
        self.play = ""
        self.listeners: list[Callable[[str, str], None]] = []  # (host, message)

    def _host(self, name: str) -> HostProgress:
        return self.hosts.setdefault(name, HostProgress(name))

    def _say(self, host: str, message: str) -> None:
        for listener in self.listeners:
            listener(host, message)

    def _finish_play(self) -> None:
        """A play ended: the role it ran is done on every host still going."""
        for hp in self.hosts.values():
            if hp.play_role and hp.status == "running":
                if hp.play_role not in hp.roles_done:
                    hp.roles_done.append(hp.play_role)
                self._say(hp.name, f"{hp.play_role} done (so far ok {hp.ok}, changed {hp.changed})")
            hp.play_role = ""

    def handle(self, event: Mapping) -> bool:
        kind = event.get("event", "")
        data = event.get("event_data") or {}
        if kind == "playbook_on_play_start":
            self._finish_play()
            self.play = data.get("play", "")
            return True
        if kind == "playbook_on_stats":
            self._finish_play()
            self.stats = {
                key: dict(data.get(key) or {})
                for key in ("ok", "changed", "failures", "dark", "skipped", "rescued", "ignored", "processed")
            }
            for name in self.stats["processed"]:
                hp = self._host(name)
                if hp.status in ("waiting", "running"):
                    hp.status = OK
                hp.task = ""
            return True
        host = data.get("host")
        if not host:
            return True
        hp = self._host(host)
        role = data.get("role") or ""
        if kind == "runner_on_start":
            # Roles a role includes (base -> package_proxy) count as part of the play's role.
            hp.play_role = hp.play_role or role
            hp.role = role
            hp.task = data.get("task", "")
            if hp.status == "waiting":
                hp.status = "running"
        elif kind == "runner_on_ok":
            hp.ok += 1
            if (data.get("res") or {}).get("changed"):
                hp.changed += 1
                hp.changed_tasks.append(f"{role}: {data.get('task', '')}" if role else data.get("task", ""))
        elif kind == "runner_on_skipped":
            hp.skipped += 1
        elif kind == "runner_on_failed":
            if data.get("ignore_errors"):
                hp.ok += 1
            else:
                hp.failed += 1
                hp.status = FAILED
                hp.reason = failure_reason(data)
                self._say(host, f"FAILED {hp.reason}")
        elif kind == "runner_on_unreachable":
            hp.unreachable += 1
            hp.status = UNREACHABLE
            hp.reason = one_line("unreachable: " + str((data.get("res") or {}).get("msg", "")))
            self._say(host, hp.reason)
        elif kind == "runner_on_rescued":
            # A rescue block handled the failure: the host carries on.
            hp.status = "running"
            hp.reason = ""
        return True

    def results(self, selected: Iterable[str] | None = None) -> list[HostResult]:
        """Final per-host results. Prefers Ansible's own stats; hosts selected but never
        reported (the run died early) count as failed."""
        selected = list(selected) if selected is not None else list(self.hosts)
        stats = self.stats or {}
        out: list[HostResult] = []
        for name in selected:
            hp = self.hosts.get(name, HostProgress(name))
            count = lambda key, fallback: int((stats.get(key) or {}).get(name, fallback))  # noqa: E731
            ok = count("ok", hp.ok)
            changed = count("changed", hp.changed)
            failed = count("failures", hp.failed)
            dark = count("dark", hp.unreachable)
            skipped = count("skipped", hp.skipped)
            reason = hp.reason
            if dark:
                status = UNREACHABLE
            elif failed:
                status = FAILED
            elif self.stats is None or name not in (stats.get("processed") or {}):
                status = FAILED
                reason = reason or "no result: the run ended before this host was processed"
            else:
                status = OK
                reason = ""
            out.append(HostResult(name, status, ok, changed, failed, skipped, dark, reason, tuple(hp.changed_tasks),
                                  tuple(hp.roles_done)))
        return out


# ----------------------------------------------------------------------------- state + lock


def load_state(build_dir: Path) -> dict:
    path = deploy_state_file(build_dir)
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except ValueError:
        return {}


def merge_state(previous: Mapping, results: Iterable[HostResult], when: str) -> dict:
    """Hosts that ran take their new result; hosts outside this run keep their old one."""
    hosts = dict(previous.get("hosts") or {})
    for r in results:
        hosts[r.name] = {**asdict(r), "at": when}
    return {"updated_at": when, "hosts": hosts}


def write_state(build_dir: Path, state: Mapping) -> None:
    path = deploy_state_file(build_dir)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


class DeployLock:
    """An exclusive flock on a per-cluster file: a second deploy of the same cluster fails at
    once instead of fighting the first over the same hosts. The kernel drops the lock when the
    process dies, so a crash never leaves a stale lock."""

    def __init__(self, path: Path, cluster: str):
        self.path = path
        self.cluster = cluster
        self._fd: int | None = None

    def __enter__(self) -> "DeployLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "unknown process"
            os.close(fd)
            raise PodsysError(
                f"another deploy of cluster {self.cluster!r} is running ({holder}); lock: {self.path}"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} since {_now()}\n".encode())
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# ----------------------------------------------------------------------------- display


STATUS_STYLE = {"ok": "green", "failed": "bold red", "unreachable": "bold red", "running": "yellow", "waiting": "dim"}


def progress_table(tracker: EventTracker) -> Table:
    table = Table(title=f"deploy: {tracker.play}" if tracker.play else "deploy", expand=False)
    for col in ("host", "roles done", "role", "task", "ok", "changed", "failed", "status"):
        table.add_column(col, justify="right" if col in ("ok", "changed", "failed") else "left")
    for hp in tracker.hosts.values():
        table.add_row(
            hp.name,
            " ".join(hp.roles_done),
            hp.role,
            Text(hp.task[:48]),
            str(hp.ok),
            str(hp.changed),
            str(hp.failed + hp.unreachable),
            Text(hp.status, style=STATUS_STYLE.get(hp.status, "")),
        )
    return table


def summary_table(results: list[HostResult]) -> Group:
    table = Table(title="deploy summary")
    for col in ("host", "ok", "changed", "failed", "unreachable", "skipped", "result"):
        table.add_column(col, justify="left" if col in ("host", "result") else "right")
    for r in results:
        table.add_row(
            r.name, str(r.ok), str(r.changed), str(r.failed), str(r.unreachable), str(r.skipped),
            Text(r.status, style=STATUS_STYLE[r.status]),
        )
    reasons = [Text(f"{r.name}: {r.status}: {r.reason}", style="red") for r in results if r.status != OK]
    return Group(table, *reasons)


# ----------------------------------------------------------------------------- running


@dataclass
class DeployResult:
    results: list[HostResult]
    rc: int
    status: str  # ansible-runner's: successful | failed | timeout | canceled
    log_file: Path
    selected: list[str] | None

    @property
    def failed_hosts(self) -> list[HostResult]:
        return [r for r in self.results if r.status != OK]

    @property
    def succeeded(self) -> bool:
        return not self.failed_hosts and self.rc == 0

    @property
    def changed_total(self) -> int:
        return sum(r.changed for r in self.results)

    def as_dict(self) -> dict:
        return {
            "succeeded": self.succeeded,
            "rc": self.rc,
            "status": self.status,
            "log": str(self.log_file),
            "changed_total": self.changed_total,
            "hosts": [asdict(r) for r in self.results],
        }


def _path_with_ansible() -> str:
    """PATH for ansible-runner, which runs `ansible-playbook` by name: the one installed beside
    this Python first, so a virtualenv's Ansible is used even when the venv is not activated."""
    path = os.environ.get("PATH", "")
    beside = Path(sys.executable).parent
    if (beside / "ansible-playbook").is_file():
        return f"{beside}{os.pathsep}{path}"
    if not shutil.which("ansible-playbook"):
        raise PodsysError("ansible-playbook not found (pip install ansible-core)")
    return path


def run_deploy(
    build_dir: Path,
    options: DeployOptions,
    console: Console,
    playbook: str = SITE_PLAYBOOK,
    extravars: Mapping | None = None,
) -> DeployResult:
    """Runs `playbook` against the rendered inventory in build_dir. Never raises for host
    failures: those are in the result. Raises PodsysError when Ansible cannot start at all."""
    import ansible_runner  # imported here: slow to import, and only deploy needs it

    build_dir = build_dir.resolve()
    inventory = build_dir / "inventory" / "hosts.yml"
    if not inventory.is_file():
        raise PodsysError(f"no rendered inventory at {inventory}; run podsys render first")
    books = playbooks_dir()
    known = inventory_hosts(inventory)
    state = load_state(build_dir)
    selected = select_hosts(options, known, state)
    if selected is not None and not selected:
        why = "no host failed in the last deploy" if options.resume else "--limit matched no host"
        console.print(f"nothing to do: {why}")
        return DeployResult([], 0, "successful", build_logs_dir(build_dir), [])

    cfg = build_dir / "ansible.cfg"
    cfg.write_text(ansible_cfg_text(build_dir, books / "roles", options.forks))
    logs = build_logs_dir(build_dir)
    (logs / "runner").mkdir(parents=True, exist_ok=True)
    (build_dir / "facts").mkdir(exist_ok=True)
    (build_dir / ".runner").mkdir(exist_ok=True)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    ident = f"deploy-{stamp}"

    tracker = EventTracker(selected if selected is not None else known)
    interactive = console.is_terminal
    if not interactive:
        tracker.listeners.append(lambda host, msg: console.print(f"{host}: {msg}", markup=False, highlight=False))

    cmdline = ["--check", "--diff"] if options.check else []
    kwargs = dict(
        private_data_dir=str(build_dir / ".runner"),
        project_dir=str(books),
        playbook=str(books / playbook),
        inventory=str(inventory),
        artifact_dir=str(logs / "runner"),
        ident=ident,
        rotate_artifacts=20,
        fact_cache=str(build_dir / "facts"),  # absolute: ansible-runner would put it per run
        forks=options.forks,
        limit=",".join(selected) if selected is not None else None,
        tags=options.tags or None,
        cmdline=" ".join(cmdline) or None,
        extravars=dict(extravars or {}),
        envvars={
            "ANSIBLE_CONFIG": str(cfg),
            # ansible-runner turns host key checking off unless told otherwise.
            "ANSIBLE_HOST_KEY_CHECKING": "True",
            "ANSIBLE_NOCOLOR": "1",
            "PATH": _path_with_ansible(),
        },
        verbosity=options.verbosity or None,
        quiet=True,
        event_handler=tracker.handle,
    )
    try:
        if interactive:
            with Live(progress_table(tracker), console=console, refresh_per_second=4, transient=False) as live:
                kwargs["event_handler"] = lambda ev: (tracker.handle(ev), live.update(progress_table(tracker)))[0]
                runner = ansible_runner.run(**kwargs)
        else:
            runner = ansible_runner.run(**kwargs)
    except Exception as exc:  # ansible-runner raises ConfigurationError & co. for setup problems
        raise PodsysError(f"could not start ansible-playbook: {one_line(str(exc))}") from None

    log_file = logs / f"{ident}.log"
    stdout = Path(runner.config.artifact_dir) / "stdout"
    if stdout.is_file():
        shutil.copyfile(stdout, log_file)
    else:
        log_file.write_text("")
    results = tracker.results(selected if selected is not None else known)
    rc = runner.rc if runner.rc is not None else 1
    if rc != 0 and tracker.stats is None:
        # ansible-playbook itself failed (syntax error, bad inventory): say so from its output.
        tail = [ln for ln in log_file.read_text(errors="replace").splitlines() if ln.strip()][-3:]
        raise PodsysError(f"ansible-playbook exited {rc}: {one_line(' '.join(tail))} (log: {log_file})")
    with log_file.open("a") as fh:
        fh.write("\n# podsys deploy summary\n")
        for r in results:
            fh.write(f"{r.name}: {r.status} ok={r.ok} changed={r.changed} failed={r.failed} "
                     f"unreachable={r.unreachable} {r.reason}\n")
    if not options.check:
        write_state(build_dir, merge_state(state, results, _now()))
    return DeployResult(results, rc, runner.status, log_file, selected)
