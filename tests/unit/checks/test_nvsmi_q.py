import pytest

from podsys.checks.findings import Verdict
from podsys.checks.nvsmi_q import judge_nvsmi_q, parse_nvsmi_q
from tests.unit.checks.helpers import fixture, one, profile

H100 = profile("hgx-h100-8gpu")


def test_healthy_board_passes_every_check():
    gpus = parse_nvsmi_q(fixture("nvidia_smi_q_8xh100_healthy.txt"))
    assert len(gpus) == 8 and gpus[0]["pci.bus_id"] == "00000000:18:00.0" and gpus[0]["name"] == "NVIDIA H100 80GB HBM3"
    assert gpus[0]["clocks_throttle_reasons.active"] == "0x0000000000000001"  # Idle only
    findings = judge_nvsmi_q(gpus, "gpu001", H100)
    assert {f.check for f in findings} >= {"gpu.count", "gpu.ecc_errors", "gpu.clocks", "gpu.pcie_link", "gpu.nvlink"}
    assert all(f.verdict is Verdict.PASS for f in findings), [f for f in findings if f.verdict is not Verdict.PASS]


def test_faults_are_each_found():
    findings = judge_nvsmi_q(parse_nvsmi_q(fixture("nvidia_smi_q_8xh100_faults.txt")), "gpu001", H100)
    ecc = one(findings, "gpu.ecc_errors")
    assert ecc.verdict is Verdict.FAIL and "GPU 3" in ecc.detail and "row remap pending" in ecc.detail
    clocks = one(findings, "gpu.clocks")
    assert clocks.verdict is Verdict.FAIL and "GPU 5" in clocks.detail and "HW slowdown" in clocks.detail
    link = one(findings, "gpu.pcie_link")
    assert link.verdict is Verdict.FAIL and "GPU 6" in link.detail and "x8 of x16" in link.detail
    fabric = one(findings, "gpu.nvlink")
    assert fabric.verdict is Verdict.FAIL and "In Progress" in fabric.detail and "fabric manager" in fabric.diagnosis


V100_BLOCK = """GPU 00000000:3B:00.0
    Product Name                          : Tesla V100-SXM2-32GB
    Persistence Mode                      : Enabled
    PCI
        Bus Id                            : 00000000:3B:00.0
        GPU Link Info
            PCIe Generation
                Max                       : 3
                Current                   : 3
            Link Width
                Max                       : 16x
                Current                   : 16x
    Clocks Throttle Reasons
        Idle                              : Not Active
        Applications Clocks Setting       : Not Active
        SW Power Cap                      : Not Active
        HW Slowdown                       : Not Active
        HW Thermal Slowdown               : Active
        HW Power Brake Slowdown           : Not Active
        Sync Boost                        : Not Active
        SW Thermal Slowdown               : Not Active
    ECC Mode
        Current                           : Enabled
        Pending                           : Enabled
    ECC Errors
        Volatile
            Single Bit
                Device Memory             : 0
                Total                     : 0
            Double Bit
                Device Memory             : 2
                Register File             : 0
                Total                     : 2
    Retired Pages
        Single Bit ECC                    : 0
        Double Bit ECC                    : 1
        Pending Page Blacklist            : Yes
    Clocks
        SM                                : 1245 MHz
    Max Clocks
        SM                                : 1530 MHz
"""


def test_older_layout_throttle_reasons_double_bit_and_retired_pages():
    # driver 450-525 layout (V100): "Clocks Throttle Reasons", Double Bit totals, Retired Pages
    (gpu,) = parse_nvsmi_q("==============NVSMI LOG==============\n\n" + V100_BLOCK)
    assert gpu["ecc.errors.uncorrected.volatile.total"] == "2" and gpu["remapped_rows.pending"] == "Yes"
    assert int(gpu["clocks_throttle_reasons.active"], 16) == 0x40
    findings = judge_nvsmi_q([gpu], "v100-01", None)
    assert one(findings, "gpu.ecc_errors").verdict is Verdict.FAIL
    assert one(findings, "gpu.clocks").verdict is Verdict.FAIL and "HW thermal slowdown" in one(findings, "gpu.clocks").detail
    assert one(findings, "gpu.nvlink").verdict is Verdict.SKIP  # no Fabric block before driver 535


def test_not_nvidia_smi_q_output_is_rejected():
    with pytest.raises(ValueError, match="nvidia-smi -q"):
        parse_nvsmi_q("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\n")
