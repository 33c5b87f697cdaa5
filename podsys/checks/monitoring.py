"""Monitoring: every Prometheus scrape target is up, and every node has one.

Asks the Prometheus HTTP API on the head (GET /api/v1/targets) from the head itself, so it
works whatever address Prometheus is bound to on the provision network."""

from __future__ import annotations

import json
import urllib.parse
from collections import defaultdict

from podsys.checks.findings import Finding, failed, passed, skip, warned
from podsys.checks.live import Context, Probe, Results
from podsys.layout import PROMETHEUS_PORT
UNKNOWN_RETRIES = 12


def parse_targets(text: str) -> list[dict]:
    """The activeTargets of a /api/v1/targets answer."""
    # saved answers may carry a '#' header saying where they came from
    text = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"not a Prometheus API answer (invalid JSON: {exc})") from None
    if not isinstance(data, dict) or data.get("status") != "success":
        raise ValueError(f"Prometheus API answered status {data.get('status') if isinstance(data, dict) else '?'}")
    return list(data.get("data", {}).get("activeTargets", []))


def _host_of(target: dict) -> str:
    instance = target.get("labels", {}).get("instance") or target.get("scrapeUrl", "")
    instance = instance.split("://")[-1].split("/")[0]
    return instance.rsplit(":", 1)[0] if ":" in instance else instance


def judge_targets(targets: list[dict], nodes: dict[str, list[str]], optional: dict[str, list[str]] | None = None) -> list[Finding]:
    """nodes: node name -> the names/addresses its targets may use (name, fqdn, provision IP);
    each must have a target. optional: hosts (the head) judged only if they have targets."""
    optional = optional or {}
    alias = {a: name for name, aliases in {**optional, **nodes}.items() for a in aliases}
    per_node: dict[str, list[dict]] = defaultdict(list)
    others: list[dict] = []
    for target in targets:
        host = _host_of(target)
        labels = target.get("labels", {})
        name = alias.get(host) or alias.get(labels.get("node", "")) or alias.get(labels.get("hostname", ""))
        (per_node[name] if name else others).append(target)
    out: list[Finding] = []
    for name in list(nodes) + [h for h in optional if h not in nodes and per_node.get(h)]:
        mine = per_node.get(name, [])
        down = [t for t in mine if t.get("health") not in ("up", "unknown")]
        pending = [t for t in mine if t.get("health") == "unknown"]
        if not mine:
            out.append(failed(name, "monitoring.targets", detail="no Prometheus scrape target for this node",
                              diagnosis="add the node to the scrape config: rerun podsys deploy --tags monitoring (head)"))
        elif down:
            out.append(failed(
                name, "monitoring.targets", value=len(down),
                detail="; ".join(f"{t.get('labels', {}).get('job', '?')} {t.get('labels', {}).get('instance', '?')} "
                                 f"{t.get('health')}: {t.get('lastError', '')[:100]}" for t in down),
                diagnosis="the exporter is not answering: systemctl status prometheus-node-exporter on the node, and check "
                "the head can reach its port (firewall)",
            ))
        elif pending:
            out.append(warned(name, "monitoring.targets", value=len(pending),
                              detail="not scraped yet: " + ", ".join(t.get("labels", {}).get("job", "?") for t in pending),
                              diagnosis="Prometheus has not scraped these targets yet (just deployed?): rerun the check in a minute"))
        else:
            jobs = sorted({t.get("labels", {}).get("job", "?") for t in mine})
            out.append(passed(name, "monitoring.targets", value=len(mine), detail=f"up: {', '.join(jobs)}"))
    for target in others:
        labels = target.get("labels", {})
        where = f"{labels.get('job', '?')} {labels.get('instance', '?')}"
        if target.get("health") != "up":
            out.append(failed(_host_of(target), "monitoring.targets", detail=f"{where} {target.get('health')}: {target.get('lastError', '')[:100]}",
                              diagnosis="a scrape target outside the node list is down: check that exporter or remove it from the config"))
        else:
            out.append(passed(_host_of(target), "monitoring.targets", detail=f"{where} up"))
    return out


def probes(ctx: Context) -> list[Probe]:
    if not any("monitoring" in n.layers for n in ctx.nodes) and "monitoring" not in ctx.cluster.manifest.layers:
        return []
    address = str(ctx.cluster.manifest.head.address)
    urls = " ".join(f"http://{host}:{PROMETHEUS_PORT}/api/v1/targets" for host in ("127.0.0.1", address))
    fetch = (
        'if command -v curl >/dev/null; then curl -fsS --max-time 10 "$u"; else python3 -c '
        '"import sys,urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())" "$u"; fi'
    )
    # Right after a deploy Prometheus may list no targets yet (service discovery not run) or
    # targets with health "unknown" (not scraped yet): ask again every 5 s for up to a minute.
    script = (
        f"for attempt in $(seq 1 {UNKNOWN_RETRIES}); do "
        f'for u in {urls}; do if out=$({fetch} 2>/dev/null); then break; fi; out=""; done; '
        f'[ -n "$out" ] || {{ echo "Prometheus API not answering on port {PROMETHEUS_PORT} ({urls})" >&2; exit 1; }}; '
        """printf '%s' "$out" | grep -q -e '"health":"unknown"' -e '"activeTargets":\\[\\]' || break; sleep 5; """
        'done; printf "%s\\n" "$out"'
    )
    # the last day of podsys health results, for the report's timeline (empty before health runs)
    query = urllib.parse.urlencode({"query": HEALTH_QUERY, "step": "300"})
    history = (
        f'end=$(date +%s); start=$((end - 86400)); for u in {" ".join(f"http://{h}:{PROMETHEUS_PORT}/api/v1/query_range" for h in ("127.0.0.1", address))}; do '
        f'u="$u?{query}&start=$start&end=$end"; if out=$({fetch} 2>/dev/null); then printf "%s\\n" "$out"; exit 0; fi; done; exit 1'
    )
    return [Probe(host=ctx.head, name="prometheus-targets", command=script, timeout=60 + 5 * UNKNOWN_RETRIES),
            Probe(host=ctx.head, name="prometheus-health", command=history, timeout=30)]


def judge(ctx: Context, results: Results) -> list[Finding]:
    nodes = [n for n in ctx.nodes if "monitoring" in n.layers]
    out = [skip(n.name, "monitoring.targets", "node has no monitoring layer") for n in ctx.nodes if "monitoring" not in n.layers]
    if not nodes:
        return out
    result = results.get((ctx.head, "prometheus-targets"))
    if result is None or not result.ran or result.rc != 0:
        why = result.problem() if result else "not collected"
        return out + [failed("cluster", "monitoring.targets", detail=why,
                             diagnosis="Prometheus is not answering on the head: systemctl status prometheus; rerun podsys deploy --tags monitoring")]
    try:
        targets = parse_targets(result.stdout)
    except ValueError as exc:
        return out + [failed("cluster", "monitoring.targets", detail=str(exc), diagnosis="Prometheus answered something unexpected: check its logs")]
    aliases = {n.name: [n.name, n.fqdn, n.provision_ip] for n in nodes}
    head = ctx.cluster.manifest.head
    optional = {head.hostname: [head.hostname, str(head.address), "localhost", "127.0.0.1"]}
    out += judge_targets(targets, aliases, optional)
    history = results.get((ctx.head, "prometheus-health"))
    if history is not None and history.ran and history.rc == 0:
        try:
            out += judge_health_timeline(parse_health_range(history.stdout))
        except ValueError:
            pass  # the timeline is a picture for the report; the targets above are the verdict
    return out


# --- the health timeline (podsys health metrics over time) ------------------------------------

HEALTH_QUERY = "min by (node) (podsys_health_check_ok)"


def parse_health_range(text: str) -> dict[str, list[tuple[float, float]]]:
    """A /api/v1/query_range answer for HEALTH_QUERY -> {node: [(unix time, 1 healthy / 0 failing)]}."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"not a Prometheus API answer (invalid JSON: {exc})") from None
    if not isinstance(data, dict) or data.get("status") != "success" or data.get("data", {}).get("resultType") != "matrix":
        raise ValueError("not a Prometheus query_range (matrix) answer")
    out: dict[str, list[tuple[float, float]]] = {}
    for series in data["data"]["result"]:
        node = series.get("metric", {}).get("node") or series.get("metric", {}).get("instance", "?")
        out[node] = [(float(t), float(v)) for t, v in series.get("values", [])]
    return out


def judge_health_timeline(timeline: dict[str, list[tuple[float, float]]]) -> list[Finding]:
    """One finding per node carrying its health over time (the report draws the timeline); FAIL
    when the node's latest run failed, WARN when it failed at some point in the window."""
    out = []
    for node, points in sorted(timeline.items()):
        if not points:
            continue
        bad = sum(1 for _, ok in points if ok < 1)
        series = tuple(points)
        if points[-1][1] < 1:
            out.append(failed(node, "monitoring.health", value=bad, detail=f"podsys health failing now ({bad} of {len(points)} samples)",
                              diagnosis="see `podsys-health` on the node and its Slurm drain reason (podsys:<fault>)", series=series))
        elif bad:
            out.append(warned(node, "monitoring.health", value=bad, detail=f"healthy now; failing in {bad} of {len(points)} samples",
                              diagnosis="the node had a health fault in this window: see the alert history", series=series))
        else:
            out.append(passed(node, "monitoring.health", value=0, detail=f"healthy in all {len(points)} samples", series=series))
    return out
