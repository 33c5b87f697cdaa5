"""The live `nccl` area: nccl-tests' collectives on each GPU node and all_reduce across all GPU
nodes through Slurm, judged by the parser in nccl."""

from __future__ import annotations

from podsys.checks import nccl
from podsys.checks.findings import Finding, failed, skip
from podsys.checks.live import Context, Probe, Results, quote, split_sections
from podsys.checks.live_nodes import collected, gpu_nodes, unreachable

NCCL_SIZES = "-b 1G -e 16G -f 2"


def nccl_single_command(gpus: int) -> str:
    runs = []
    for coll in nccl.COLLECTIVES:
        runs.append(
            f"echo '### {coll}'; if command -v {coll}_perf >/dev/null; then NCCL_DEBUG=INFO {coll}_perf {NCCL_SIZES} -g {gpus} 2>&1; "
            f"else echo 'nccl-tests not installed ({coll}_perf not on PATH)'; fi"
        )
    return "; ".join(runs)


def nccl_multinode_command(nodes: list[str], gpus: int) -> str:
    return (
        f"NCCL_DEBUG=INFO NCCL_ALGO=Ring timeout 900 srun -N{len(nodes)} -w {quote(','.join(nodes))} "
        f"--ntasks-per-node={gpus} --gpus-per-node={gpus} --mpi=pmix all_reduce_perf {NCCL_SIZES} -g 1 2>&1"
    )


def nccl_probes(ctx: Context) -> list[Probe]:
    nodes = gpu_nodes(ctx)
    single = tuple(f"nccl.{c}" for c in (*nccl.COLLECTIVES, "correctness", "transport", "test"))
    probes = [Probe(n.name, "nccl", nccl_single_command(ctx.profile(n).gpu.count), timeout=1800, feeds=single) for n in nodes]
    if len(nodes) > 1:
        gpus = min(ctx.profile(n).gpu.count for n in nodes)
        probes.append(Probe(ctx.head, "nccl-multinode", nccl_multinode_command([n.name for n in nodes], gpus), timeout=1800,
                            feeds=("nccl.multinode",)))
    return probes


def nccl_judge(ctx: Context, results: Results) -> list[Finding]:
    out: list[Finding] = []
    nodes = gpu_nodes(ctx)
    for node, profile, result in collected(ctx, results, "nccl", "nccl.all_reduce", out):
        for coll, text in split_sections(result.stdout).items():
            if "nccl-tests not installed" in text:
                out.append(skip(node.name, f"nccl.{coll}", text.strip()))
                continue
            try:
                out += nccl.judge_nccl(nccl.parse_nccl_tests(text, coll), node.name, profile)
            except ValueError:
                out.append(failed(node.name, f"nccl.{coll}", detail=(text.strip().splitlines() or ['no output'])[-1][:160],
                                  diagnosis="the NCCL test did not complete: read the raw output (CUDA error 802 = fabric manager down)"))
    if len(nodes) > 1:
        label = ",".join(n.name for n in nodes) if len(nodes) <= 4 else f"{len(nodes)} nodes"
        result = results.get((ctx.head, "nccl-multinode"))
        if result is None or not result.ran:
            out.append(unreachable(label, "nccl.multinode.all_reduce", result))
        else:
            try:
                out += nccl.judge_nccl(nccl.parse_nccl_tests(result.stdout, "all_reduce"), label, ctx.profile(nodes[0]))
            except ValueError:
                out.append(failed(label, "nccl.multinode.all_reduce", detail=result.problem(),
                                  diagnosis="the multi-node NCCL test did not run: check srun --mpi=pmix, nccl-tests built with MPI, and IB"))
    elif len(nodes) == 1:
        out.append(skip(nodes[0].name, "nccl.multinode.all_reduce", "multi-node NCCL needs two GPU nodes"))
    return out
