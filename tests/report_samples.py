"""A report's worth of findings judged from the checks fixtures (shared by the report tests)."""

from __future__ import annotations

from pathlib import Path

from podsys.checks.registry import PARSE_KINDS
from podsys.cluster.hardware import builtin_profiles

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "checks"

SAMPLE = [
    ("nccl", "nccl_all_reduce_8xh100_single_node.txt", "gpu001"),
    ("nccl", "nccl_all_gather_8xh100_low.txt", "gpu003"),
    ("nccl", "nccl_all_reduce_2x8xh100_multinode.txt", "gpu[001-002]"),
    ("perftest", "ib_write_bw_ndr_gbits.txt", "gpu002->gpu001 mlx5_0"),
    ("perftest", "ib_write_bw_mib_sweep.txt", "gpu001->gpu002 mlx5_3"),
    ("perftest", "ib_write_bw_mb_old_degraded.txt", "gpu003->gpu002 mlx5_5"),
    ("ibstat", "ibstat_8x_ndr_degraded_and_down.txt", "gpu003"),
    ("nvidia-smi-query", "nvidia_smi_query_7of8_faults.csv", "gpu002"),
    ("nvidia-smi-query", "nvidia_smi_query_8xh100_healthy.csv", "gpu001"),
    ("dmesg", "dmesg_xid79_and_downtrained_nic.txt", "gpu002"),
    ("nvbandwidth", "nvbandwidth_8xh100_healthy.txt", "gpu001"),
]


def sample_findings():
    from podsys.checks.monitoring import judge_health_timeline, parse_health_range

    h100 = builtin_profiles()["hgx-h100-8gpu"]
    out = []
    for kind, name, node in SAMPLE:
        out += PARSE_KINDS[kind][1]((FIXTURES / name).read_text(), node, h100, name)
    out += judge_health_timeline(parse_health_range((FIXTURES / "prometheus_health_range.json").read_text()))
    return out
