"""Slurm: every node known and idle, `srun -N<all> hostname` returns every node, GPU gres
visible. Runs on the head (the slurmctld host, a submit host)."""

from __future__ import annotations

import re

from podsys.checks.findings import CPU_ONLY_REASON, Finding, failed, passed, skip, warned
from podsys.checks.live import Context, Probe, Results, quote, split_sections

_HEALTHY = {"idle"}
_BUSY = {"mixed", "allocated", "completing", "planned", "reserved"}


def parse_sinfo(text: str) -> dict[str, dict[str, str]]:
    """`sinfo -N -h -o '%N|%T|%G'` -> {node: {"state": "idle", "responding": "yes", "gres": "gpu:8"}}."""
    out: dict[str, dict[str, str]] = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 2 or not parts[0]:
            continue
        state = parts[1].strip().lower()
        responding = "no" if state.endswith("*") else "yes"
        state = state.rstrip("*~#!%$@^-+")
        out.setdefault(parts[0].strip(), {"state": state, "responding": responding, "gres": parts[2].strip() if len(parts) > 2 else ""})
    return out


def parse_srun(text: str) -> tuple[set[str], int | None, str]:
    """hostnames printed, srun's exit code (from the trailing 'rc=N'), and the first error line."""
    hosts, rc, errors, notes = set(), None, [], []
    for line in text.splitlines():
        line = line.strip()
        m = re.fullmatch(r"rc=(\d+)", line)
        if m:
            rc = int(m.group(1))
        elif "error" in line.lower():
            errors.append(line)
        elif line.startswith("srun:"):
            notes.append(line)
        elif re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.-]*", line):
            hosts.add(line.split(".")[0])
    return hosts, rc, (errors + notes + [""])[0]


def _launch_error_for(text: str, node: str) -> str:
    """The srun error line naming this node, e.g. 'Task launch ... failed on node node02: ...'."""
    for line in text.splitlines():
        if re.search(rf"\bon node {re.escape(node)}\b", line):
            return line.strip()
    return ""


def parse_srun_each(text: str) -> dict[str, tuple[set[str], int | None, str]]:
    out: dict[str, tuple[set[str], int | None, str]] = {}
    for block in re.split(r"^== ", text, flags=re.M):
        if not block.strip():
            continue
        name, _, body = block.partition("\n")
        out[name.strip()] = parse_srun(body)
    return out


def gres_gpus(gres: str) -> int:
    return sum(int(m.group(1)) for m in re.finditer(r"gpu(?::[^:,()]+)?:(\d+)", gres))


def probes(ctx: Context) -> list[Probe]:
    nodes = [n.name for n in ctx.nodes if "slurm" in n.layers]
    if not nodes:
        return []
    names = " ".join(quote(n) for n in nodes)
    # One srun over every node (the acceptance criterion); then, for any node that did not
    # answer, one srun on that node alone, so the report names the node that is broken rather
    # than every node of an aborted step.
    script = (
        "echo '### sinfo'; sinfo -N -h -o '%N|%T|%G' 2>&1; "
        "echo '### srun'; "
        f"out=$(timeout 180 srun --immediate=60 -N{len(nodes)} -w {quote(','.join(nodes))} --ntasks-per-node=1 -t 5 hostname -s 2>&1); "
        'rc=$?; printf "%s\\n" "$out"; echo "rc=$rc"; '
        "echo '### srun-each'; "
        f"for n in {names}; do "
        '  printf "%s\\n" "$out" | grep -qx "$n" || { echo "== $n"; timeout 90 srun --immediate=30 -N1 -w "$n" -t 2 hostname -s 2>&1; echo "rc=$?"; }; '
        "done"
    )
    return [Probe(host=ctx.head, name="slurm", command=script, timeout=600)]


def judge(ctx: Context, results: Results) -> list[Finding]:
    nodes = [n for n in ctx.nodes if "slurm" in n.layers]
    out: list[Finding] = [skip(n.name, "slurm.state", "node has no slurm layer") for n in ctx.nodes if "slurm" not in n.layers]
    if not nodes:
        return out
    result = results.get((ctx.head, "slurm"))
    if result is None or not result.ran:
        why = result.problem() if result else "not collected"
        return out + [failed(n.name, "slurm.state", detail=why, diagnosis="cannot query Slurm on the head: check SSH to the head") for n in nodes]
    sections = split_sections(result.stdout)
    return out + judge_slurm(sections, [(n.name, ctx.profile(n)) for n in nodes])


def judge_slurm(sections: dict[str, str], nodes: list) -> list[Finding]:
    """nodes: [(name, HardwareProfile)]."""
    sinfo = parse_sinfo(sections.get("sinfo", ""))
    srun_hosts, srun_rc, srun_error = parse_srun(sections.get("srun", ""))
    each = parse_srun_each(sections.get("srun-each", ""))
    out: list[Finding] = []
    if not sinfo:
        text = sections.get("sinfo", "").strip().splitlines()[:1] or ["no output"]
        return [failed(name, "slurm.state", detail=f"sinfo: {text[0][:160]}",
                       diagnosis="slurmctld is not answering on the head: systemctl status slurmctld munge; check /var/log/slurm") for name, _ in nodes]
    for name, profile in nodes:
        info = sinfo.get(name)
        if info is None:
            out.append(failed(name, "slurm.state", detail="not listed by sinfo",
                              diagnosis="the node is missing from slurm.conf: rerun podsys deploy --tags slurm on the head"))
        elif info["responding"] == "no" or info["state"] not in _HEALTHY | _BUSY:
            out.append(failed(
                name, "slurm.state", value=info["state"] + ("*" if info["responding"] == "no" else ""),
                detail=f"state {info['state']}{', not responding' if info['responding'] == 'no' else ''}",
                diagnosis="slurmd is down or the node is drained: systemctl status slurmd munge on the node, check time sync and "
                "munge key, then scontrol update nodename=<node> state=resume",
            ))
        elif info["state"] in _BUSY:
            out.append(warned(name, "slurm.state", value=info["state"], detail=f"state {info['state']}: jobs are running",
                              diagnosis="the node is busy; acceptance numbers need idle nodes: rerun when the jobs end"))
        else:
            out.append(passed(name, "slurm.state", value="idle"))

        if name in srun_hosts:
            out.append(passed(name, "slurm.srun", detail=f"answered srun -N{len(nodes)} hostname"))
        else:
            alone_hosts, alone_rc, alone_error = each.get(name, (set(), None, ""))
            if name in alone_hosts:
                out.append(warned(
                    name, "slurm.srun", detail=f"missing from srun -N{len(nodes)} (rc {srun_rc}: {srun_error[:100]}) but answers alone",
                    diagnosis="the multi-node step was aborted by another node's failure; fix the failing node and rerun",
                ))
            else:
                named = _launch_error_for(sections.get("srun", ""), name)
                why = "; ".join(dict.fromkeys(w for w in (named, alone_error) if w)) or srun_error or \
                    f"rc {alone_rc if alone_rc is not None else srun_rc}"
                out.append(failed(
                    name, "slurm.srun", detail=f"no answer to srun: {why[:300]}",
                    diagnosis="Slurm cannot start tasks on this node: check slurmd (systemctl status slurmd), munge, and the node's "
                    "firewall for the slurmd port",
                ))

        if profile.gpu is None:
            out.append(skip(name, "slurm.gres", CPU_ONLY_REASON))
        elif info is not None:
            count = gres_gpus(info["gres"])
            if count < profile.gpu.count:
                out.append(failed(
                    name, "slurm.gres", value=count, threshold=float(profile.gpu.count), detail=f"gres {info['gres'] or '(none)'}, expected gpu:{profile.gpu.count}",
                    diagnosis="GPU gres not visible: check gres.conf and GresTypes=gpu in slurm.conf, /dev/nvidia* on the node, then restart slurmd",
                ))
            else:
                out.append(passed(name, "slurm.gres", value=count, detail=f"gres {info['gres']}"))
    return out
