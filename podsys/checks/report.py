"""The acceptance report: a terminal table per area, report.json and a self-contained
report.html (inline CSS and SVG; nothing fetched from the network to view it).

Pure functions turn findings into text/data/markup; only `write_report` touches the disk."""

from __future__ import annotations

import html
import json
import math
from collections import Counter, defaultdict
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Iterable

import jinja2
from markupsafe import Markup
from rich.console import Console
from rich.table import Table
from rich.text import Text

from podsys.checks.catalog import fault_code, spec_for
from podsys.checks.findings import AREAS, Finding, Verdict, sort_findings, worst

COLOURS = {"PASS": "#2e8b57", "WARN": "#e0a100", "FAIL": "#c62828", "SKIP": "#9e9e9e"}
RICH_STYLES = {"PASS": "green", "WARN": "yellow", "FAIL": "bold red", "SKIP": "dim"}


def summary(findings: Iterable[Finding]) -> dict[str, int]:
    counts = Counter(f.verdict.value for f in findings)
    return {v.value: counts.get(v.value, 0) for v in (Verdict.FAIL, Verdict.WARN, Verdict.PASS, Verdict.SKIP)}


def exit_code(findings: Iterable[Finding]) -> int:
    return 1 if any(f.verdict is Verdict.FAIL for f in findings) else 0


def _value(f: Finding) -> str:
    if f.value is None:
        return ""
    if isinstance(f.value, float):
        return f"{f.value:g} {f.unit}".strip()
    return f"{f.value} {f.unit}".strip()


def _threshold(f: Finding) -> str:
    if f.threshold is None:
        return ""
    limit = f" (limit {f.limit:g})" if f.limit is not None else ""
    return f">= {f.threshold:g} {f.unit}{limit}".strip()


# --- terminal ---------------------------------------------------------------------------------

def print_report(findings: list[Finding], console: Console, title: str = "podsys check") -> None:
    """One table per area (areas with failures first), failures first inside each, one line per finding."""
    by_area: dict[str, list[Finding]] = defaultdict(list)
    for f in findings:
        by_area[f.area].append(f)
    order = sorted(by_area, key=lambda a: (worst(by_area[a]).rank, AREAS.index(a) if a in AREAS else 99))
    for area in order:
        table = Table(title=Text(f"{area} ({_counts_line(summary(by_area[area]))})"), title_justify="left", expand=False)
        for column in ("verdict", "node", "check", "value", "threshold", "detail / diagnosis"):
            table.add_column(column, overflow="fold")
        for f in sort_findings(by_area[area]):
            text = f.detail + (f"\n→ {f.diagnosis}" if f.diagnosis and f.verdict in (Verdict.FAIL, Verdict.WARN) else "")
            # Text, not markup strings: node names like gpu[001-002] and PCI ids like :AB: are data
            table.add_row(Text(f.verdict.value, style=RICH_STYLES[f.verdict.value]), Text(f.node), Text(f.check),
                          Text(_value(f)), Text(_threshold(f)), Text(text))
        console.print(table)
    console.print(Text(f"{title}: {_counts_line(summary(findings))}"))


def _counts_line(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {v}" for v, n in counts.items() if n) or "no findings"


# --- json -------------------------------------------------------------------------------------

def report_data(findings: list[Finding], meta: dict | None = None) -> dict:
    return {
        "generated": (meta or {}).get("generated") or datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        **{k: v for k, v in (meta or {}).items() if k != "generated"},
        "summary": summary(findings),
        "exit_code": exit_code(findings),
        "findings": [_with_catalog(f) for f in sort_findings(findings)],
    }


def _with_catalog(f: Finding) -> dict:
    """The finding plus its catalogue entry's tier and fault code (what `podsys health` drains
    and alerts under), so the acceptance report and the health runs speak the same codes."""
    data = f.to_dict()
    spec = spec_for(f.check)
    data["tier"] = spec.tier if spec else ""
    data["fault"] = fault_code(f.check, f.value, f"{f.detail} {f.diagnosis}") if f.verdict is Verdict.FAIL else (spec.fault if spec else "")
    return data


def load_report(path: Path) -> list[Finding]:
    known = set(Finding.__dataclass_fields__)
    return [Finding.from_dict({k: v for k, v in d.items() if k in known}) for d in json.loads(Path(path).read_text())["findings"]]


# --- svg plots (pure) -------------------------------------------------------------------------

def _esc(text) -> str:
    return html.escape(str(text), quote=True)


def heatmap_svg(findings: list[Finding]) -> str:
    """Nodes (rows) x areas (columns), each cell the worst verdict of that node's findings there."""
    cells: dict[tuple[str, str], list[Finding]] = defaultdict(list)
    for f in findings:
        cells[(f.node, f.area)].append(f)
    nodes = sorted({f.node for f in findings}, key=lambda n: (min(worst(cells[(n, a)]).rank for a in AREAS if cells.get((n, a))), n))
    areas = [a for a in AREAS if any((n, a) in cells for n in nodes)]
    if not nodes:
        return '<svg xmlns="http://www.w3.org/2000/svg" width="300" height="30"><text x="5" y="20">no findings</text></svg>'
    cw, ch, left, top = 86, 22, max(90, 7 * max(len(n) for n in nodes) + 12), 30
    width, height = left + cw * len(areas) + 10, top + ch * len(nodes) + 10
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="heatmap" width="{width}" height="{height}" role="img" aria-label="verdict per node and area">']
    for j, area in enumerate(areas):
        parts.append(f'<text x="{left + j * cw + cw / 2}" y="20" text-anchor="middle" class="axis">{_esc(area)}</text>')
    for i, node in enumerate(nodes):
        y = top + i * ch
        parts.append(f'<text x="{left - 6}" y="{y + 15}" text-anchor="end" class="axis">{_esc(node)}</text>')
        for j, area in enumerate(areas):
            fs = cells.get((node, area))
            if not fs:
                continue
            verdict = worst(fs).value
            tip = "; ".join(f"{f.check} {f.verdict.value}" for f in sort_findings(fs)[:6])
            parts.append(
                f'<rect x="{left + j * cw + 1}" y="{y + 1}" width="{cw - 2}" height="{ch - 2}" fill="{COLOURS[verdict]}" '
                f'data-verdict="{verdict}"><title>{_esc(node)} {_esc(area)}: {_esc(tip)}</title></rect>'
                f'<text x="{left + j * cw + cw / 2}" y="{y + 15}" text-anchor="middle" class="cell">{verdict}</text>'
            )
    parts.append("</svg>")
    return "".join(parts)


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    exponent = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if step * exponent >= value:
            return step * exponent
    return 10 * exponent


def _human_bytes(size: float) -> str:
    for unit, factor in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if size >= factor:
            return f"{size / factor:g}{unit}"
    return f"{size:g}"


PALETTE = ["#1565c0", "#6a1b9a", "#00838f", "#ef6c00", "#2e7d32", "#ad1457", "#4e342e", "#37474f"]


def busbw_svg(title: str, series: list[Finding]) -> str:
    """NCCL busbw (GB/s) against message size (log2 axis), one line per run, dashed threshold."""
    width, height, left, right, top, bottom = 640, 320, 60, 160, 30, 45
    points = [(x, y) for f in series for x, y in f.series if x > 0]
    thresholds = sorted({f.threshold for f in series if f.threshold is not None})
    xmin, xmax = min(p[0] for p in points), max(p[0] for p in points)
    ymax = _nice_max(max([p[1] for p in points] + [f.limit or 0 for f in series] + thresholds))
    lx0, lx1 = math.log2(xmin), max(math.log2(xmax), math.log2(xmin) + 1)
    pw, ph = width - left - right, height - top - bottom

    def sx(x):
        return left + (math.log2(x) - lx0) / (lx1 - lx0) * pw

    def sy(y):
        return top + ph - y / ymax * ph

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="plot busbw" width="{width}" height="{height}" role="img" aria-label="{_esc(title)}">',
             f'<text x="{left}" y="18" class="title">{_esc(title)}</text>',
             f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" class="frame"/>']
    for k in range(5):
        y = ymax * k / 4
        parts.append(f'<line x1="{left}" x2="{left + pw}" y1="{sy(y):.1f}" y2="{sy(y):.1f}" class="grid"/>'
                     f'<text x="{left - 6}" y="{sy(y) + 4:.1f}" text-anchor="end" class="axis">{y:g}</text>')
    step = max(1, round((lx1 - lx0) / 8))
    e = math.ceil(lx0)
    while e <= lx1:
        parts.append(f'<text x="{sx(2 ** e):.1f}" y="{top + ph + 16}" text-anchor="middle" class="axis">{_human_bytes(2 ** e)}</text>')
        e += step
    parts.append(f'<text x="{left + pw / 2}" y="{height - 6}" text-anchor="middle" class="axis">message size (bytes)</text>'
                 f'<text x="14" y="{top + ph / 2}" transform="rotate(-90 14 {top + ph / 2})" text-anchor="middle" class="axis">busbw (GB/s)</text>')
    for t in thresholds:
        parts.append(f'<line x1="{left}" x2="{left + pw}" y1="{sy(t):.1f}" y2="{sy(t):.1f}" class="threshold" data-threshold="{t:g}"/>'
                     f'<text x="{left + pw + 4}" y="{sy(t) + 4:.1f}" class="threshold-label">threshold {t:g}</text>')
    for i, f in enumerate(series):
        colour = COLOURS["FAIL"] if f.verdict is Verdict.FAIL else PALETTE[i % len(PALETTE)]
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in f.series if x > 0)
        parts.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2" class="series" data-node="{_esc(f.node)}">'
                     f'<title>{_esc(f.node)}: {f.value} GB/s at the largest size ({f.verdict.value})</title></polyline>')
        parts.append(f'<text x="{left + pw + 4}" y="{top + 14 + 14 * i}" fill="{colour}" class="legend">{_esc(f.node)} {f.verdict.value}</text>')
    parts.append("</svg>")
    return "".join(parts)


def bars_svg(title: str, bars: list[Finding], unit: str) -> str:
    """One bar per node pair (ib_write_bw), coloured by verdict, with the threshold line."""
    bar_h, left, right, top = 20, max(120, 7 * max(len(f.node) for f in bars) + 12), 90, 30
    width = 640
    height = top + bar_h * len(bars) + 40
    vmax = _nice_max(max([float(f.value or 0) for f in bars] + [f.limit or 0 for f in bars]))
    pw = width - left - right

    def sx(v):
        return left + v / vmax * pw

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="plot bars" width="{width}" height="{height}" role="img" aria-label="{_esc(title)}">',
             f'<text x="{left}" y="18" class="title">{_esc(title)}</text>']
    for i, f in enumerate(bars):
        y = top + i * bar_h
        value = float(f.value or 0)
        parts.append(f'<text x="{left - 6}" y="{y + 14}" text-anchor="end" class="axis">{_esc(f.node)}</text>'
                     f'<rect x="{left}" y="{y + 2}" width="{max(sx(value) - left, 1):.1f}" height="{bar_h - 4}" fill="{COLOURS[f.verdict.value]}" '
                     f'data-verdict="{f.verdict.value}"><title>{_esc(f.node)}: {value:g} {unit} ({f.verdict.value})</title></rect>'
                     f'<text x="{sx(value) + 4:.1f}" y="{y + 14}" class="axis">{value:g}</text>')
    base = top + bar_h * len(bars)
    for t in sorted({f.threshold for f in bars if f.threshold is not None}):
        parts.append(f'<line x1="{sx(t):.1f}" x2="{sx(t):.1f}" y1="{top - 4}" y2="{base + 4}" class="threshold" data-threshold="{t:g}"/>'
                     f'<text x="{sx(t):.1f}" y="{base + 18}" text-anchor="middle" class="threshold-label">threshold {t:g} {unit}</text>')
    parts.append(f'<text x="{left + pw / 2}" y="{height - 4}" text-anchor="middle" class="axis">{unit}</text></svg>')
    return "".join(parts)


def gpu_bars_svg(title: str, f: Finding) -> str:
    """One bar per GPU (nvbandwidth per-GPU values), red below the threshold, with its line."""
    bars = [(int(gpu), value) for gpu, value in f.series]
    bar_w, left, top, bottom = 56, 60, 30, 50
    width = left + bar_w * len(bars) + 120
    height = 260
    ph = height - top - bottom
    vmax = _nice_max(max([v for _, v in bars] + [f.limit or 0, f.threshold or 0]))

    def sy(v):
        return top + ph - v / vmax * ph

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="plot gpubars" width="{width}" height="{height}" role="img" aria-label="{_esc(title)}">',
             f'<text x="{left}" y="18" class="title">{_esc(title)}</text>']
    for k in range(5):
        y = vmax * k / 4
        parts.append(f'<line x1="{left}" x2="{left + bar_w * len(bars)}" y1="{sy(y):.1f}" y2="{sy(y):.1f}" class="grid"/>'
                     f'<text x="{left - 6}" y="{sy(y) + 4:.1f}" text-anchor="end" class="axis">{y:g}</text>')
    for i, (gpu, value) in enumerate(bars):
        x = left + i * bar_w
        verdict = "FAIL" if f.threshold is not None and value < f.threshold else "PASS"
        parts.append(f'<rect x="{x + 6}" y="{sy(value):.1f}" width="{bar_w - 12}" height="{top + ph - sy(value):.1f}" fill="{COLOURS[verdict]}" '
                     f'data-verdict="{verdict}"><title>GPU {gpu}: {value:g} {_esc(f.unit)} ({verdict})</title></rect>'
                     f'<text x="{x + bar_w / 2}" y="{top + ph + 16}" text-anchor="middle" class="axis">GPU {gpu}</text>')
    if f.threshold is not None:
        parts.append(f'<line x1="{left}" x2="{left + bar_w * len(bars)}" y1="{sy(f.threshold):.1f}" y2="{sy(f.threshold):.1f}" class="threshold" '
                     f'data-threshold="{f.threshold:g}"/><text x="{left + bar_w * len(bars) + 4}" y="{sy(f.threshold) + 4:.1f}" '
                     f'class="threshold-label">threshold {f.threshold:g}</text>')
    parts.append(f'<text x="14" y="{top + ph / 2}" transform="rotate(-90 14 {top + ph / 2})" text-anchor="middle" class="axis">{_esc(f.unit)}</text></svg>')
    return "".join(parts)


def timeline_svg(title: str, rows: list[Finding]) -> str:
    """Each node's podsys health over time (monitoring.health series of (unix time, 1 ok / 0 failing)):
    one row per node, green while healthy, red while failing."""
    times = [t for f in rows for t, _ in f.series]
    t0, t1 = min(times), max(max(times), min(times) + 1)
    row_h, left, right, top = 20, max(90, 7 * max(len(f.node) for f in rows) + 12), 20, 30
    width, height = 900, top + row_h * len(rows) + 40
    pw = width - left - right

    def sx(t):
        return left + (t - t0) / (t1 - t0) * pw

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="plot timeline" width="{width}" height="{height}" role="img" aria-label="{_esc(title)}">',
             f'<text x="{left}" y="18" class="title">{_esc(title)}</text>']
    for i, f in enumerate(rows):
        y = top + i * row_h
        parts.append(f'<text x="{left - 6}" y="{y + 14}" text-anchor="end" class="axis">{_esc(f.node)}</text>')
        points = sorted(f.series)
        for (t, ok), (t_next, _) in zip(points, points[1:] + [(t1, 0)]):
            verdict = "PASS" if ok >= 1 else "FAIL"
            stamp = datetime.fromtimestamp(t, timezone.utc).strftime("%H:%M")
            parts.append(f'<rect x="{sx(t):.1f}" y="{y + 2}" width="{max(sx(t_next) - sx(t), 1):.1f}" height="{row_h - 4}" fill="{COLOURS[verdict]}" '
                         f'data-verdict="{verdict}"><title>{_esc(f.node)} {stamp} UTC: {verdict}</title></rect>')
    base = top + row_h * len(rows)
    for k in range(5):
        t = t0 + (t1 - t0) * k / 4
        parts.append(f'<text x="{sx(t):.1f}" y="{base + 16}" text-anchor="middle" class="axis">'
                     f'{datetime.fromtimestamp(t, timezone.utc).strftime("%m-%d %H:%M")}</text>')
    parts.append(f'<text x="{left + pw / 2}" y="{height - 4}" text-anchor="middle" class="axis">time (UTC)</text></svg>')
    return "".join(parts)


def plots(findings: list[Finding]) -> list[tuple[str, str]]:
    """(title, svg) for every plot the findings can feed."""
    out = []
    by_check: dict[str, list[Finding]] = defaultdict(list)
    for f in findings:
        if f.area == "nccl" and f.series:
            by_check[f.check].append(f)
    for check in sorted(by_check):
        title = f"{check}: busbw vs message size"
        out.append((title, busbw_svg(title, sorted(by_check[check], key=lambda f: f.node))))
    ib = [f for f in findings if f.check == "infiniband.ib_write_bw" and isinstance(f.value, (int, float))]
    if ib:
        out.append(("ib_write_bw per node pair", bars_svg("ib_write_bw per node pair", sorted(ib, key=lambda f: f.node), ib[0].unit or "Gb/s")))
    for f in sorted((f for f in findings if f.area == "bandwidth" and f.series), key=lambda f: (f.node, f.check)):
        title = f"{f.node} {f.check.split('.', 1)[1]}: per GPU"
        out.append((title, gpu_bars_svg(title, f)))
    health = [f for f in findings if f.check == "monitoring.health" and f.series]
    if health:
        out.append(("podsys health per node", timeline_svg("podsys health per node (Prometheus)", sorted(health, key=lambda f: f.node))))
    return out


# --- html -------------------------------------------------------------------------------------

def render_html(findings: list[Finding], meta: dict | None = None) -> str:
    template_text = (resources.files("podsys") / "templates" / "check" / "report.html.j2").read_text()
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    data = report_data(findings, meta)
    ordered = sort_findings(findings)
    return env.from_string(template_text).render(
        meta=data,
        counts=data["summary"],
        colours=COLOURS,
        heatmap=Markup(heatmap_svg(findings)),
        plots=[(t, Markup(svg)) for t, svg in plots(findings)],
        findings=ordered,
        value=_value,
        threshold=_threshold,
    )


def write_report(findings: list[Finding], directory: Path, meta: dict | None = None) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    meta = dict(meta or {})
    meta.setdefault("generated", datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
    paths = {"json": directory / "report.json", "html": directory / "report.html"}
    paths["json"].write_text(json.dumps(report_data(findings, meta), indent=2) + "\n")
    paths["html"].write_text(render_html(findings, meta))
    return paths
