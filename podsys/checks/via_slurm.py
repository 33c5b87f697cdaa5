"""`podsys check --via-slurm`: the heavy probes (DCGM diag, single-node NCCL, nvbandwidth,
ib_write_bw, multi-node NCCL) run as Slurm jobs on idle nodes instead of straight over SSH, so
a benchmark never lands on a node that is running someone's job, and the scheduler keeps
users' jobs off the nodes while the benchmark runs.

How the nodes are held: a Slurm reservation, created for the run on exactly the nodes `sinfo`
says are idle and deleted when the run ends. Why a reservation and not a low-priority
partition: a partition needs slurm.conf changes (and preemption set up) on every cluster, and
being low priority only orders the queue: a user's job could still start on the node between
our jobs, and ours would then wait behind it or share the node. A reservation is made and
removed at run time with no configuration, and Slurm refuses to create it on a node that has a
job running ("Requested nodes are busy"), so a node that turned busy after `sinfo` was read is
never used either. Its Duration bounds how long a crashed run can hold nodes.

The light probes still go over SSH; the judges, raw/ files and the report are the same as for
`podsys check`. Pure functions build the commands and read the answers; the executor wraps the
SSH one (commands run on the head, where srun/scontrol are)."""

from __future__ import annotations

import math
import re
import shlex
from dataclasses import dataclass, field, replace
from datetime import datetime

from podsys.checks.findings import Finding, skip
from podsys.checks.live import Probe, ProbeResult, sections_script

# The node states `sinfo -N -o %T` prints for a node with nothing running and open for jobs.
# (slurm.schedmd.com/sinfo.html, NODE STATE CODES: "idle"; a trailing "*" is "not responding",
# "~" powered off, "#" powering up, "!" pending power down, "%" powering down.)
IDLE_STATES = frozenset({"idle"})
JOB_MARKER = "podsys-slurm-job"
IMMEDIATE_SECONDS = 300
DCGM_PROBE = "gpu-dcgm"

# What each heavy probe feeds: the check-name prefixes whose findings are its own, for the SKIP
# a busy node gets instead of a measurement.
HEAVY_FEEDS = {
    DCGM_PROBE: ("gpu.dcgm_diag",),
    "nvbandwidth": ("bandwidth",),
    "nccl": ("nccl",),
    "nccl-multinode": ("nccl.multinode",),
    "ib_write_bw": ("infiniband.ib_write_bw",),
}


def feeds_of(probe_name: str) -> tuple[str, ...]:
    return HEAVY_FEEDS.get(probe_name.split("-", 1)[0] if probe_name.startswith("ib_write_bw-") else probe_name, ())


# --- reading Slurm ----------------------------------------------------------------------------

SINFO_STATES = "sinfo -h -N -o '%N %T'"


def parse_sinfo_states(text: str) -> dict[str, str]:
    """node -> state from `sinfo -h -N -o '%N %T'` (one line per node and partition; a node in two
    partitions is listed twice with the same state)."""
    states: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2:
            raise ValueError(f"line {number}: expected 'NODE STATE', got {line.strip()!r}")
        states[parts[0]] = parts[1].lower()
    return states


def split_idle(nodes: list[str], states: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """(idle nodes, {busy node: why}) for the nodes the heavy probes need."""
    idle, busy = [], {}
    for node in nodes:
        state = states.get(node)
        if state is None:
            busy[node] = "not in Slurm (sinfo does not list it)"
        elif state in IDLE_STATES:
            idle.append(node)
        else:
            busy[node] = f"busy in Slurm ({state}): heavy checks run only on idle nodes"
    return idle, busy


def reservation_name(now: datetime) -> str:
    return f"podsys-check-{now.strftime('%Y%m%d-%H%M%S')}"


def create_reservation_command(name: str, nodes: list[str], user: str, minutes: int) -> str:
    # no IGNORE_JOBS flag on purpose: Slurm then refuses nodes that have a job running
    return (f"scontrol create reservation ReservationName={shlex.quote(name)} StartTime=now "
            f"Duration={int(minutes)} Nodes={shlex.quote(','.join(nodes))} Users={shlex.quote(user)}")


def delete_reservation_command(name: str) -> str:
    return f"scontrol delete ReservationName={shlex.quote(name)}"


def reservation_minutes(probes: list[Probe]) -> int:
    """Long enough for every heavy probe one after another (they may share nodes), plus slack."""
    return max(10, math.ceil(sum(p.timeout for p in probes) / 60) + 5)


def job_command(probe: Probe, reservation: str, head: str, gpus: int = 0) -> str:
    """The command the head runs for a heavy probe. A node's own probe becomes one srun job on
    that node (exclusive, its GPUs as gres, a time limit from the probe's timeout); a probe that
    already calls srun from the head (ib_write_bw pairs, multi-node NCCL) gets the reservation
    and --exclusive on its srun. The job's id and node go to stderr for raw/index.json."""
    flags = f"--reservation={shlex.quote(reservation)} --exclusive"
    if probe.host == head:
        if not re.search(r"\bsrun ", probe.command):
            raise ValueError(f"{probe.name}: a head probe without srun cannot run as a Slurm job")
        return re.sub(r"\bsrun ", f"srun {flags} ", probe.command, count=1)
    minutes = max(1, math.ceil(probe.timeout / 60))
    gres = f" --gres=gpu:{gpus}" if gpus else ""
    body = f'echo "{JOB_MARKER} $SLURM_JOB_ID $(hostname -s)" >&2; {probe.command}'
    # --immediate: the node is ours in the reservation, so waiting longer than a finishing job's
    # cleanup means something else is wrong; fail the probe rather than hang until its timeout
    return (f"srun --job-name={shlex.quote('podsys-check-' + probe.name)} {flags} --nodelist={shlex.quote(probe.host)} "
            f"--nodes=1 --ntasks=1{gres} --time={minutes} --immediate={IMMEDIATE_SECONDS} bash -c {shlex.quote(body)}")


def job_of(stderr: str) -> tuple[str, str] | None:
    """(job id, node) from the marker the job printed, or None if it never started."""
    m = re.search(rf"^{JOB_MARKER} (\d+) (\S+)$", stderr, re.M)
    return (m.group(1), m.group(2)) if m else None


# --- the GPU probe: its DCGM diag is heavy, the rest is not ------------------------------------

def split_gpu_probe(probe: Probe, sections: dict[str, str]) -> tuple[Probe, Probe | None]:
    """The `gpu` probe (built from these sections) without its dcgm section, to go over SSH,
    and that section alone, to run as a job. No dcgm section (--dcgm-level 0): nothing heavy."""
    if "dcgm" not in sections:
        return probe, None
    light = {k: v for k, v in sections.items() if k != "dcgm"}
    return (replace(probe, command=sections_script(light)),
            Probe(probe.host, DCGM_PROBE, sections_script({"dcgm": sections["dcgm"]}), timeout=probe.timeout))


def merge_dcgm(results: dict[tuple[str, str], ProbeResult]) -> None:
    """Put each node's gpu-dcgm output back into its gpu output, where the gpu judge reads it."""
    for (host, name), dcgm_result in list(results.items()):
        if name != DCGM_PROBE:
            continue
        gpu = results.get((host, "gpu"))
        if gpu is not None and gpu.ran and dcgm_result.ran:
            results[(host, "gpu")] = replace(gpu, stdout=gpu.stdout.rstrip("\n") + "\n" + dcgm_result.stdout)


# --- after judging ----------------------------------------------------------------------------

@dataclass
class SlurmRun:
    """What the Slurm path did, for the report's meta and for the SKIPs."""

    reservation: str = ""
    busy: dict[str, str] = field(default_factory=dict)  # node -> why it was not used
    refused: dict[tuple[str, str], str] = field(default_factory=dict)  # (host, probe) -> why it did not run
    jobs: list[dict] = field(default_factory=list)  # {"probe", "host", "job", "node"}
    error: str = ""

    def meta(self) -> dict:
        return {"reservation": self.reservation, "busy": self.busy, "jobs": self.jobs, "error": self.error}


def _covers(label: str, load: tuple[str, ...], probe_name: str) -> bool:
    """Whether a finding's node label ("gpu001", "gpu002->gpu001 mlx5_0", "gpu001,gpu002") is
    one this probe measures: all its nodes are the probe's. The multi-node NCCL run is one
    finding for all GPU nodes (labelled "N nodes" past four), so its feeds decide alone."""
    if probe_name == "nccl-multinode":
        return True
    return set(re.split(r"->|,", label.split(" ")[0])) <= set(load)


def skip_refused(findings: list[Finding], refused: dict[tuple[str, str], str], loads: dict[tuple[str, str], tuple[str, ...]]) -> list[Finding]:
    """A heavy probe that was not run on a busy node is a SKIP with the reason, not the FAIL
    ("could not collect") the judges give a missing output."""
    out = []
    for f in findings:
        why = None
        for key, reason in refused.items():
            prefixes = feeds_of(key[1])
            if any(f.check == p or f.check.startswith(p + ".") for p in prefixes) and _covers(f.node, loads.get(key, (key[0],)), key[1]):
                why = reason
                break
        out.append(skip(f.node, f.check, why) if why else f)
    return out


class SlurmJobExecutor:
    """Runs heavy probes as jobs in the reservation (through the head), refuses the ones whose
    nodes were busy, and hands every light probe to the SSH executor unchanged."""

    def __init__(self, inner, head: str, run: SlurmRun, heavy: dict[tuple[str, str], tuple[str, ...]], gpus: dict[str, int]):
        self.inner, self.head, self.slurm, self.heavy, self.gpus = inner, head, run, heavy, gpus

    def run(self, probe: Probe) -> ProbeResult:
        key = (probe.host, probe.name)
        if key not in self.heavy:
            return self.inner.run(probe)
        if key in self.slurm.refused:
            return ProbeResult(probe.host, probe.name, probe.command, None, error=self.slurm.refused[key])
        command = job_command(probe, self.slurm.reservation, self.head, self.gpus.get(probe.host, 0))
        result = self.inner.run(Probe(self.head, probe.name, command, timeout=probe.timeout + 120, feeds=probe.feeds))
        job = job_of(result.stderr)
        if job is not None:
            self.slurm.jobs.append({"probe": probe.name, "host": probe.host, "job": job[0], "node": job[1]})
        return replace(result, host=probe.host)

    def close(self) -> None:
        self.inner.close()
