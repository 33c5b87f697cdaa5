"""Every fault signature in ../shared/REFERENCE.md ("Fault signatures a check must recognise"),
each judged from a saved tool output through the same path as `podsys check parse`."""

import pytest

from podsys.checks.findings import Verdict
from podsys.checks.registry import PARSE_KINDS
from tests.unit.checks.helpers import fixture, profile

H100 = profile("hgx-h100-8gpu")

SIGNATURES = [
    # (fault, kind, fixture, failing check, words the finding must contain)
    ("GPU fell off the bus (kernel log)", "dmesg", "dmesg_xid79_and_downtrained_nic.txt", "gpu.xid", "fallen off the bus"),
    ("GPU fell off the bus (fewer GPUs than the profile)", "nvidia-smi-query", "nvidia_smi_query_7of8_faults.csv", "gpu.count", "00000000:5D:00.0"),
    ("hardware Xid errors", "dmesg", "dmesg_xid79_and_downtrained_nic.txt", "gpu.xid", "Xid 79"),
    ("CUDA init failure on HGX (nccl-tests)", "nccl", "nccl_cuda_802.txt", "nccl.test", "fabric manager"),
    ("CUDA init failure on HGX (nvbandwidth)", "nvbandwidth", "nvbandwidth_cuda_802.txt", "bandwidth.nvbandwidth", "fabric"),
    ("GPUDirect RDMA off (no peermem, proprietary modules)", "gpudirect", "versions_raw_gpudirect_none.txt", "versions.gpudirect", "nvidia_peermem"),
    ("P2P blocked by PCIe ACS", "lspci", "lspci_acs_enabled.txt", "gpu.pcie_acs", "ACS"),
    ("P2P bandwidth ~10x too low", "nvbandwidth", "nvbandwidth_8xh100_p2p_off_slow_h2d.txt", "bandwidth.device_to_device_memcpy_write_ce", "P2P"),
    ("IB link down", "ibstat", "ibstat_8x_ndr_degraded_and_down.txt", "infiniband.ports", "Polling"),
    ("IB link degraded", "ibstat", "ibstat_8x_ndr_degraded_and_down.txt", "infiniband.ports", "Rate 200 < 400"),
    ("NIC PCIe link downtrained", "dmesg", "dmesg_xid79_and_downtrained_nic.txt", "infiniband.pcie_link", "x8"),
    ("NCCL fell back to TCP", "nccl", "nccl_all_reduce_multinode_socket_fallback.txt", "nccl.multinode.transport", "TCP sockets"),
    ("NVLink down (nvlink -s)", "nvidia-smi-nvlink", "nvidia_smi_nvlink_s_inactive.txt", "gpu.nvlink", "inactive"),
    ("NVLink missing (topo -m)", "nvidia-smi-topo", "nvidia_smi_topo_8xh100_missing_nvlink.txt", "gpu.topology", "NV18"),
    ("ECC: pending row remap", "nvidia-smi-query", "nvidia_smi_query_7of8_faults.csv", "gpu.ecc_errors", "row remap pending"),
    ("ECC: remap failure", "nvidia-smi-query", "nvidia_smi_query_7of8_faults.csv", "gpu.ecc_errors", "row remap failure"),
    ("ECC: uncorrectable SRAM errors", "nvidia-smi-query", "nvidia_smi_query_7of8_faults.csv", "gpu.ecc_errors", "uncorrectable SRAM"),
]


@pytest.mark.parametrize("fault, kind, name, check, words", SIGNATURES, ids=[s[0] for s in SIGNATURES])
def test_fault_signature_is_detected(fault, kind, name, check, words):
    findings = PARSE_KINDS[kind][1](fixture(name), "gpu001", H100, name)
    hits = [f for f in findings if f.check == check and f.verdict is Verdict.FAIL and words in f.detail + " " + f.diagnosis]
    assert hits, f"{fault}: no FAIL {check} mentioning {words!r} in {findings}"
    assert all(f.diagnosis for f in hits)


def test_missing_gdrdma_in_nccl_output_is_detected():
    text = fixture("nccl_all_reduce_2x8xh100_multinode.txt").replace("/GDRDMA", "")
    findings = PARSE_KINDS["nccl"][1](text, "pair", H100, "all_reduce")
    assert any(f.check == "nccl.multinode.transport" and f.verdict is Verdict.FAIL for f in findings)
