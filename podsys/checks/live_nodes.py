"""What the hardware live areas (gpu, bandwidth, infiniband, nccl) share: which nodes have the
hardware a probe needs, the reason a node without it is skipped, and the gate that hands a judge
only the results it can read (every other node gets its SKIP or FAIL in node order)."""

from __future__ import annotations

from podsys.checks.findings import CPU_ONLY_REASON, Finding, failed, skip
from podsys.checks.live import Context, Results

KERNEL_LOG = "dmesg 2>/dev/null || journalctl -k -b --no-pager"


def gpu_nodes(ctx: Context):
    return [n for n in ctx.nodes if ctx.profile(n).gpu is not None]


def ib_nodes(ctx: Context):
    return [n for n in ctx.nodes if ctx.profile(n).has_ib]


def no_gpu_reason(ctx: Context, node) -> str:
    profile = ctx.profile(node)
    return CPU_ONLY_REASON if profile.gpu is None and profile.hca is None else f"profile {profile.id} has no GPU"


def no_ib_reason(ctx: Context, node) -> str:
    profile = ctx.profile(node)
    return CPU_ONLY_REASON if profile.gpu is None and profile.hca is None else f"profile {profile.id} has no InfiniBand HCA"


def unreachable(node: str, check: str, result) -> Finding:
    return failed(node, check, detail=result.problem() if result else "not collected",
                  diagnosis="podsys could not collect this node's output: check SSH to the node")


def collected(ctx: Context, results: Results, probe: str, check: str, out: list[Finding], needs_ib: bool = False):
    """The nodes whose `probe` output can be judged, with their profile and result. Every other
    node gets its finding in `out` as the loop passes it (SKIP: no such hardware; FAIL: the
    output was not collected), so findings keep the node order."""
    for node in ctx.nodes:
        profile = ctx.profile(node)
        if not (profile.has_ib if needs_ib else profile.gpu is not None):
            out.append(skip(node.name, check, (no_ib_reason if needs_ib else no_gpu_reason)(ctx, node)))
            continue
        result = results.get((node.name, probe))
        if result is None or not result.ran:
            out.append(unreachable(node.name, check, result))
            continue
        yield node, profile, result


def only_area(findings: list[Finding], area: str) -> list[Finding]:
    return [f for f in findings if f.area == area]
