"""Running acceptance checks on a deployed cluster: collect every probe's output over SSH
(paramiko, with the manifest's `access` settings), in parallel with progress, save each raw
output next to the report, then let the areas judge them.

Heavy probes (NCCL, nvbandwidth, ib_write_bw) declare the nodes they load; two heavy probes
sharing a node never run at once, so measurements do not disturb each other."""

from __future__ import annotations

import json
import logging
import shlex
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Protocol

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from podsys.checks import via_slurm
from podsys.checks.findings import Finding
from podsys.checks.live import Context, Probe, ProbeResult
from podsys.checks.registry import LIVE_AREAS, area_selected, probe_wanted, selected, unknown_selectors
from podsys.errors import InputError, PodsysError, Problem
from podsys.cluster.access import SSHAccess
from podsys.cluster.model import Cluster
from podsys.cluster.selection import select_nodes
from podsys.cluster.secret_files import refuse_open_permissions

class Executor(Protocol):
    def run(self, probe: Probe) -> ProbeResult: ...

    def close(self) -> None: ...


# --- SSH --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AccessSettings:
    """The cluster's one SSH access model, plus the address podsys connects to for each host."""

    access: SSHAccess
    addresses: dict[str, str]  # inventory name -> address podsys connects to

    @classmethod
    def from_cluster(cls, cluster: Cluster) -> "AccessSettings":
        access = cluster.access
        addresses = {access.head_name: access.head_address}
        addresses.update({n.name: n.provision_ip for n in cluster.nodes})
        return cls(access=access, addresses=addresses)


def remote_command(command: str, user: str) -> str:
    """Checks read kernel logs and device state: as a non-root user, go through sudo -n (never
    prompting; a missing sudo rule shows up as a clear error in the probe's output)."""
    return command if user == "root" else f"sudo -n bash -c {shlex.quote(command)}"


class SSHExecutor:
    """One SSH connection per host, reused by all of that host's probes; compute nodes are
    reached through the head when `access.via_head` is set (a direct-tcpip channel, so the head
    needs no agent forwarding and sees no key)."""

    def __init__(self, settings: AccessSettings, connect_timeout: float = 15.0):
        import paramiko  # imported here: parsing and reporting must not need it

        # paramiko logs a refused proxied channel ("Secsh channel 2 open FAILED", "Success for
        # unrequested channel!") through Python's last-resort handler, onto the user's terminal;
        # every failure already reaches the caller as an exception, with its reason.
        logging.getLogger("paramiko").addHandler(logging.NullHandler())
        self._paramiko = paramiko
        self.settings = settings
        self.connect_timeout = connect_timeout
        self._clients: dict[str, object] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        access = settings.access
        if access.private_key_file is not None and not access.private_key_file.is_file():
            raise InputError(Problem(str(access.private_key_file), None, "access.private_key_file", "file not found"))
        if access.private_key_file is not None:
            refuse_open_permissions(access.private_key_file, "access.private_key_file")
        if access.known_hosts_file is not None and not access.known_hosts_file.is_file():
            raise InputError(Problem(str(access.known_hosts_file), None, "access.known_hosts_file", "file not found"))

    def _lock(self, host: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(host, threading.Lock())

    def _new_client(self):
        paramiko = self._paramiko
        client = paramiko.SSHClient()
        if self.settings.access.known_hosts_file is not None:
            client.load_host_keys(str(self.settings.access.known_hosts_file))
        else:
            client.load_system_host_keys()
        # Unknown host keys are refused, never trusted on first use: a check must not talk to
        # an impostor that answers on a node's address.
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        return client

    def client(self, host: str):
        with self._lock(host):
            existing = self._clients.get(host)
            if existing is not None and existing.get_transport() is not None and existing.get_transport().is_active():
                return existing
            address = self.settings.addresses.get(host)
            if address is None:
                raise PodsysError(f"{host}: not a host of this cluster")
            access = self.settings.access
            sock = None
            if access.jump_host(host) is not None:
                head_transport = self.client(access.head_name).get_transport()
                sock = head_transport.open_channel("direct-tcpip", (address, access.port), ("127.0.0.1", 0),
                                                   timeout=self.connect_timeout)
            client = self._new_client()
            key = str(access.private_key_file) if access.private_key_file else None
            client.connect(
                address, port=access.port, username=access.user, key_filename=key, sock=sock,
                timeout=self.connect_timeout, banner_timeout=self.connect_timeout, auth_timeout=self.connect_timeout,
                look_for_keys=key is None, allow_agent=key is None,
            )
            self._clients[host] = client
            return client

    def run(self, probe: Probe) -> ProbeResult:
        paramiko = self._paramiko
        try:
            transport = self.client(probe.host).get_transport()
            channel = transport.open_session(timeout=self.connect_timeout)
        except paramiko.BadHostKeyException as exc:
            return ProbeResult(probe.host, probe.name, probe.command, None, error=f"host key mismatch for {exc.hostname} (known_hosts)")
        except paramiko.SSHException as exc:
            hint = " (not in known_hosts)" if "not found in known_hosts" in str(exc) else ""
            return ProbeResult(probe.host, probe.name, probe.command, None, error=f"SSH: {exc}{hint}")
        except (OSError, socket.timeout, PodsysError) as exc:
            return ProbeResult(probe.host, probe.name, probe.command, None, error=f"cannot connect: {exc}")
        out, err = bytearray(), bytearray()
        deadline = time.monotonic() + probe.timeout
        try:
            channel.exec_command(remote_command(probe.command, self.settings.access.user))
            while True:
                while channel.recv_ready():
                    out += channel.recv(65536)
                while channel.recv_stderr_ready():
                    err += channel.recv_stderr(65536)
                if channel.exit_status_ready() and not channel.recv_ready() and not channel.recv_stderr_ready():
                    break
                if time.monotonic() > deadline:
                    channel.close()
                    return ProbeResult(probe.host, probe.name, probe.command, None, out.decode(errors="replace"),
                                       err.decode(errors="replace"), error=f"timed out after {probe.timeout}s")
                channel.status_event.wait(0.05)
            rc = channel.recv_exit_status()
        except (paramiko.SSHException, OSError) as exc:
            return ProbeResult(probe.host, probe.name, probe.command, None, out.decode(errors="replace"),
                               err.decode(errors="replace"), error=f"SSH channel failed: {exc}")
        finally:
            channel.close()
        return ProbeResult(probe.host, probe.name, probe.command, rc, out.decode(errors="replace"), err.decode(errors="replace"))

    def close(self) -> None:
        for client in list(self._clients.values())[::-1]:  # nodes first, the head (their jump host) last
            try:
                client.close()
            except Exception:  # closing is best effort
                pass
        self._clients.clear()


# --- scheduling -------------------------------------------------------------------------------

def probe_load(probe: Probe, ctx: Context) -> tuple[str, ...]:
    """Nodes a heavy probe loads (empty for light probes)."""
    if probe.name == "nccl-multinode":
        return tuple(sorted(n.name for n in ctx.nodes if ctx.profile(n).gpu is not None))
    if probe.name.startswith("ib_write_bw-"):
        return tuple(sorted(probe.name.removeprefix("ib_write_bw-").split("-", 1)))
    if probe.name in ("nccl", "nvbandwidth", via_slurm.DCGM_PROBE):
        return (probe.host,)
    if probe.name == "gpu" and ctx.dcgm_level >= 2 and "dcgmi diag" in probe.command:
        return (probe.host,)  # dcgmi diag from level 2 on loads the GPUs too
    return ()


def collect(probes: list[Probe], executor: Executor, ctx: Context, *, workers: int = 16,
            on_done: Callable[[ProbeResult], None] | None = None) -> dict[tuple[str, str], ProbeResult]:
    """Run every probe; heavy probes take their nodes' locks in sorted order (no deadlock, no
    two measurements on one node at once)."""
    node_locks = {name: threading.Lock() for name in {n for p in probes for n in probe_load(p, ctx)}}

    def run_one(probe: Probe) -> ProbeResult:
        held = [node_locks[n] for n in probe_load(probe, ctx)]
        for lock in held:
            lock.acquire()
        try:
            return executor.run(probe)
        finally:
            for lock in reversed(held):
                lock.release()

    results: dict[tuple[str, str], ProbeResult] = {}
    # light probes first so a slow benchmark never delays the quick answers
    ordered = sorted(probes, key=lambda p: bool(probe_load(p, ctx)))
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = {pool.submit(run_one, p): p for p in ordered}
        for future in as_completed(futures):
            result = future.result()
            results[(result.host, result.name)] = result
            if on_done:
                on_done(result)
    return results


def save_raw(results: Iterable[ProbeResult], directory: Path) -> Path:
    """raw/<host>/<probe>.txt (stdout, exactly as collected, so `podsys check parse` can re-judge
    it), .stderr next to it when there is any, and raw/index.json with commands and exit codes."""
    raw = directory / "raw"
    index = []
    for r in sorted(results, key=lambda r: (r.host, r.name)):
        host_dir = raw / r.host
        host_dir.mkdir(parents=True, exist_ok=True)
        (host_dir / f"{r.name}.txt").write_text(r.stdout)
        if r.stderr:
            (host_dir / f"{r.name}.stderr").write_text(r.stderr)
        index.append({"host": r.host, "probe": r.name, "command": r.command, "rc": r.rc, "error": r.error,
                      "stdout": f"raw/{r.host}/{r.name}.txt"})
    raw.mkdir(parents=True, exist_ok=True)
    (raw / "index.json").write_text(json.dumps(index, indent=2) + "\n")
    return raw


# --- the whole run ----------------------------------------------------------------------------

def default_output_dir(cluster: Cluster) -> Path:
    return cluster.workspace.check_run_dir(datetime.now(timezone.utc))


def run_checks(cluster: Cluster, *, only: list[str], skip: list[str], limit: str | None, output_dir: Path,
               executor: Executor | None = None, console: Console | None = None, workers: int = 16,
               dcgm_level: int = 1, slurm_run: via_slurm.SlurmRun | None = None) -> list[Finding]:
    """Collect, save raw/, judge. With `slurm_run` (--via-slurm) the heavy probes run as Slurm
    jobs in a reservation on the idle nodes, and `slurm_run` records what that did."""
    bad = unknown_selectors(only + skip)
    if bad:
        raise InputError(Problem("--only/--skip", None, "", f"unknown area or check {', '.join(bad)}; areas: {', '.join(LIVE_AREAS)}"))
    nodes = select_nodes(cluster, limit, "--limit")
    ctx = Context(cluster=cluster, nodes=tuple(nodes), head=cluster.manifest.head.hostname, dcgm_level=dcgm_level)
    areas = [a for a in LIVE_AREAS.values() if area_selected(a.name, only, skip)]
    probes = [p for a in areas for p in a.probes(ctx) if probe_wanted(p.feeds, only, skip)]
    own_executor = executor is None
    executor = executor or SSHExecutor(AccessSettings.from_cluster(cluster))
    console = console or Console(stderr=True)
    heavy: dict[tuple[str, str], tuple[str, ...]] = {}
    extra: list[ProbeResult] = []
    try:
        if slurm_run is not None:
            probes, heavy, extra = plan_via_slurm(probes, ctx, executor, slurm_run, datetime.now(timezone.utc))
            executor = via_slurm.SlurmJobExecutor(executor, ctx.head, slurm_run, heavy,
                                                  {n.name: ctx.profile(n).gpu.count for n in ctx.nodes if ctx.profile(n).gpu})
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console, transient=True, disable=not probes) as progress:
            task = progress.add_task("collecting", total=len(probes))

            def done(result: ProbeResult) -> None:
                state = "ok" if result.ran and result.rc == 0 else (f"rc {result.rc}" if result.ran else "unreachable")
                progress.update(task, advance=1, description=f"collecting: {result.host} {result.name} {state}")

            results = collect(probes, executor, ctx, workers=workers, on_done=done)
    finally:
        if slurm_run is not None and slurm_run.reservation:
            inner = executor.inner if isinstance(executor, via_slurm.SlurmJobExecutor) else executor
            gone = inner.run(Probe(ctx.head, "slurm-reservation-delete", via_slurm.delete_reservation_command(slurm_run.reservation), timeout=60))
            extra.append(gone)
            if gone.rc != 0:
                slurm_run.error = f"reservation {slurm_run.reservation} not deleted: {gone.problem()}"
        if own_executor:
            executor.close()
    if slurm_run is not None:
        via_slurm.merge_dcgm(results)
    save_raw([*results.values(), *extra], output_dir)
    findings: list[Finding] = []
    for area in areas:
        findings += [f for f in area.judge(ctx, results) if selected(f.check, only, skip)]
    if slurm_run is not None:
        findings = via_slurm.skip_refused(findings, slurm_run.refused, heavy)
    return findings


def plan_via_slurm(probes: list[Probe], ctx: Context, executor: Executor, slurm_run: via_slurm.SlurmRun,
                   now: datetime) -> tuple[list[Probe], dict[tuple[str, str], tuple[str, ...]], list[ProbeResult]]:
    """Split each GPU node's DCGM diag off its light probe, find the heavy probes' nodes idle in
    Slurm, reserve those (a second try if one turned busy in between), and mark the heavy probes
    whose nodes are busy as refused. Returns the probes, the heavy ones with their nodes, and
    the head's answers (saved under raw/ with the rest)."""
    from podsys.checks.live_gpu import gpu_sections

    planned: list[Probe] = []
    for probe in probes:
        if probe.name == "gpu" and probe.host != ctx.head:
            light, dcgm = via_slurm.split_gpu_probe(probe, gpu_sections(ctx.dcgm_level))
            planned += [light] + ([dcgm] if dcgm else [])
        else:
            planned.append(probe)
    heavy = {(p.host, p.name): probe_load(p, ctx) for p in planned if probe_load(p, ctx)}
    answers: list[ProbeResult] = []
    needed = sorted({n for load in heavy.values() for n in load})
    why_not: dict[str, str] = {}
    for attempt in (1, 2):
        if not needed:
            break
        sinfo = executor.run(Probe(ctx.head, f"slurm-sinfo-{attempt}", via_slurm.SINFO_STATES, timeout=60))
        answers.append(sinfo)
        try:
            if not sinfo.ran or sinfo.rc != 0:
                raise ValueError(sinfo.problem())
            idle, busy = via_slurm.split_idle(needed, via_slurm.parse_sinfo_states(sinfo.stdout))
        except ValueError as exc:
            why_not = {n: f"cannot read node states from Slurm: {exc}" for n in needed}
            break
        slurm_run.busy = busy
        why_not = dict(busy)
        if not idle:
            break
        name = via_slurm.reservation_name(now)
        created = executor.run(Probe(ctx.head, f"slurm-reservation-{attempt}", via_slurm.create_reservation_command(
            name, idle, "root", via_slurm.reservation_minutes([p for p in planned if (p.host, p.name) in heavy])), timeout=60))
        answers.append(created)
        if created.ran and created.rc == 0:
            slurm_run.reservation = name
            break
        # "Requested nodes are busy": a job started on one since sinfo; read the states again
        why_not.update({n: f"Slurm refused a reservation on it: {created.problem()}" for n in idle})
    for key, load in heavy.items():
        reason = next((f"{n}: {why_not[n]}" for n in load if n in why_not), None)
        if reason is None and not slurm_run.reservation:
            reason = "no reservation was made"
        if reason is not None:
            slurm_run.refused[key] = reason
    return planned, heavy, answers
