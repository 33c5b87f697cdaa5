"""The one catalogue of checks: name, tier, fault code and where its threshold comes from.

`podsys check` (acceptance, over SSH) and `podsys health` (on each node, every few minutes
from Slurm's HealthCheckProgram) judge with the same functions and name their findings from
this table; Slurm drain reasons (`podsys:<fault> <detail>`) and Prometheus alert rules (one per
fault class) are keyed by the fault code.

Tiers, after the three every large GPU operator runs:
  prolog   the fast subset a job cannot start without (GPUs all there, no pending row remap,
           fabric manager up, IB ports up): Slurm's Prolog before every job, in well under a
           second; the periodic passive run includes them
  passive  read-only, seconds: safe every few minutes on a node running jobs (podsys health)
  active   minutes, needs the node idle: DCGM level 2/3, NCCL, nvbandwidth, ib_write_bw
           (podsys check, or as Slurm jobs on idle nodes with --via-slurm)
"""

from __future__ import annotations

from dataclasses import dataclass

TIERS = ("prolog", "passive", "active")


@dataclass(frozen=True)
class CheckSpec:
    name: str  # the Finding.check it yields, "gpu.count"
    tier: str
    fault: str  # fault code: the drain reason's and the alert's key
    threshold: str  # where the pass/fail line comes from
    description: str


CATALOG: tuple[CheckSpec, ...] = (
    # --- prolog (also in every passive run) and passive: podsys health -----------------------------------------------------------------
    CheckSpec("gpu.count", "prolog", "gpu-missing", "profile gpu.count and gpu.pci_bus_ids", "every GPU of the profile enumerated, at its bus id"),
    CheckSpec("gpu.model", "passive", "gpu-model", "profile gpu.product_name", "the GPUs are the profile's model"),
    CheckSpec("gpu.xid", "passive", "gpu-xid", "NVIDIA Xid catalogue (hardware Xids)", "no new hardware Xid or fallen-off-the-bus event since the last run"),
    CheckSpec("gpu.fabric_manager", "prolog", "fm-stopped", "profile gpu.nvswitch", "nvidia-fabricmanager active on an NVSwitch board"),
    CheckSpec("gpu.gpudirect", "passive", "peermem-missing", "profile gpu + InfiniBand hca", "GPUDirect RDMA path the plan names present: nvidia_peermem loaded, or DMA-BUF (open modules, kernel >= 5.12)"),
    CheckSpec("infiniband.ports", "prolog", "ib-port-down", "profile hca.count and hca.rate_gbps", "every IB port Active/LinkUp at the profile's rate"),
    CheckSpec("gpu.ecc_errors", "prolog", "row-remap-pending", "zero: any pending/failed remap or uncorrectable error", "no pending or failed row remap, no uncorrectable ECC error"),
    CheckSpec("gpu.ecc_mode", "passive", "ecc-off", "ECC enabled", "ECC on"),
    CheckSpec("gpu.persistence", "passive", "persistence-off", "persistence mode on", "persistence mode on"),
    CheckSpec("gpu.nvlink", "passive", "nvlink-inactive", "profile gpu.nvlink.links_per_gpu", "every NVLink link active"),
    CheckSpec("gpu.pcie_link", "passive", "pcie-degraded", "the GPU's own maximum link width", "GPU PCIe link at full width"),
    CheckSpec("gpu.clocks", "passive", "gpu-throttled", "NVML clock event reasons (HW/thermal/power brake)", "no hardware or thermal clock throttling"),
    CheckSpec("node.disk", "passive", "disk-full", "health.json disk_min_free_percent", "enough free space on /, /var, /tmp"),
    CheckSpec("node.memory", "passive", "memory-low", "health.json memory_min_available_percent", "enough available memory"),
    # --- active: podsys check (acceptance; also as jobs on idle nodes) --------------------------
    CheckSpec("gpu.topology", "active", "nvlink-inactive", "profile gpu.nvlink.links_per_gpu", "nvidia-smi topo -m: NV<n> between every GPU pair"),
    CheckSpec("gpu.pcie_acs", "active", "pcie-acs", "ACS off on GPU/HCA switch ports (bare metal)", "no ACS redirect between GPUs and HCAs"),
    CheckSpec("gpu.dcgm_diag", "active", "dcgm-diag", "DCGM's own pass/fail", "dcgmi diag -r N"),
    CheckSpec("bandwidth.nvbandwidth", "active", "gpu-bandwidth", "profile acceptance h2d_bw/d2h_bw/p2p_bw", "nvbandwidth copy matrices"),
    CheckSpec("infiniband.errors", "active", "ib-errors", "zero: IBTA error counters", "port error counters not moving"),
    CheckSpec("infiniband.pcie_link", "active", "pcie-degraded", "the NIC's own link (kernel's 'limited by')", "NIC PCIe link not downtrained"),
    CheckSpec("infiniband.ib_write_bw", "active", "ib-bandwidth", "profile acceptance ib_write_bw", "RDMA bandwidth between node pairs"),
    CheckSpec("nccl", "active", "nccl-bandwidth", "profile acceptance nccl_<collective>_busbw", "nccl-tests bus bandwidth at the largest size"),
    CheckSpec("nccl.transport", "active", "nccl-transport", "NET/IB with GDRDMA on IB profiles", "NCCL's transport (no socket fallback)"),
    CheckSpec("versions.gpudirect", "active", "gpudirect-off", "profile gpu + InfiniBand hca; open modules and kernel >= 5.12 for DMA-BUF",
              "GPUDirect RDMA path active and named: nvidia_peermem or DMA-BUF"),
    CheckSpec("versions", "active", "stack-mismatch", "the stack's pinned versions", "OS, driver, CUDA, NCCL, OFED, FM, DCGM versions"),
    CheckSpec("slurm", "active", "slurm", "all nodes idle and answering", "Slurm sees every node"),
    CheckSpec("monitoring", "active", "monitoring", "one scrape target up per node", "Prometheus scrapes every node"),
    CheckSpec("network", "active", "network", "every host reaches every other", "provision network reachability and MTU"),
)

_BY_NAME = {spec.name: spec for spec in CATALOG}
assert len(_BY_NAME) == len(CATALOG), "a check is listed twice"
assert all(spec.tier in TIERS for spec in CATALOG)


def spec_for(check: str) -> CheckSpec | None:
    """The entry for a finding's check name: exact, else the longest dotted prefix, else the
    entry for the check's last part ("nccl.multinode.transport" -> "nccl.transport")."""
    if check in _BY_NAME:
        return _BY_NAME[check]
    parts = check.split(".")
    for end in range(len(parts) - 1, 0, -1):
        prefix = ".".join(parts[:end])
        tail = f"{parts[0]}.{parts[-1]}"
        if tail in _BY_NAME:
            return _BY_NAME[tail]
        if prefix in _BY_NAME:
            return _BY_NAME[prefix]
    if check.startswith("bandwidth."):
        return _BY_NAME["bandwidth.nvbandwidth"]
    return None


def fault_code(check: str, value: object = None, detail: str = "") -> str:
    """The fault code a failed finding is drained and alerted under. One check can point at
    different faults: a port that is down is not a port at a lower rate; Xid 79 is a GPU gone."""
    spec = spec_for(check)
    code = spec.fault if spec else check.replace(".", "-")
    if check == "infiniband.ports" and isinstance(value, (int, float)) and "degraded" in detail:
        return "ib-rate-degraded"
    if check == "gpu.xid" and ("Xid 79" in detail or "fallen off the bus" in detail):
        return "xid79"
    if check == "gpu.fabric_manager" or (check == "gpu.nvlink" and "fabric manager is not running" in detail):
        return "fm-stopped"
    return code


def prolog_checks() -> list[CheckSpec]:
    """The prolog gate's set: only what a starting job cannot survive, from the quickest commands."""
    return [spec for spec in CATALOG if spec.tier == "prolog"]


def passive_checks() -> list[CheckSpec]:
    """The periodic run's set: the prolog checks and the rest of the read-only ones."""
    return [spec for spec in CATALOG if spec.tier in ("prolog", "passive")]


def checks_for_tier(tier: str) -> frozenset[str]:
    """Check names `podsys health --tier TIER` runs."""
    if tier == "prolog":
        return frozenset(s.name for s in prolog_checks())
    if tier == "passive":
        return frozenset(s.name for s in passive_checks())
    raise ValueError(f"unknown tier {tier!r}; the node runs prolog or passive")
