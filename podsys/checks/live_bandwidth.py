"""The live `bandwidth` area: nvbandwidth's host<->device and device<->device copies on every GPU
node, judged by the parser in nvbandwidth."""

from __future__ import annotations

from podsys.checks import nvbandwidth
from podsys.checks.findings import Finding, failed, skip
from podsys.checks.live import Context, Probe, Results
from podsys.checks.live_nodes import collected, gpu_nodes


NVBANDWIDTH = ("command -v nvbandwidth >/dev/null || { echo 'nvbandwidth not installed'; exit 0; }; "
               "nvbandwidth -t host_to_device_memcpy_ce device_to_host_memcpy_ce device_to_device_memcpy_write_ce")


def bandwidth_probes(ctx: Context) -> list[Probe]:
    return [Probe(node.name, "nvbandwidth", NVBANDWIDTH, timeout=600) for node in gpu_nodes(ctx)]


def bandwidth_judge(ctx: Context, results: Results) -> list[Finding]:
    out: list[Finding] = []
    for node, profile, result in collected(ctx, results, "nvbandwidth", "bandwidth.nvbandwidth", out):
        if "nvbandwidth not installed" in result.stdout:
            out.append(skip(node.name, "bandwidth.nvbandwidth", "nvbandwidth not installed on the node"))
        else:
            try:
                out += nvbandwidth.judge_nvbandwidth(nvbandwidth.parse_nvbandwidth(result.stdout), node.name, profile)
            except ValueError:
                out.append(failed(node.name, "bandwidth.nvbandwidth", detail=result.problem(),
                                  diagnosis="nvbandwidth did not run: check CUDA (error 802 means fabric manager is down)"))
    return out
