from podsys.checks.findings import Verdict
from podsys.checks.pcie import judge_acs, parse_lspci_acs
from tests.unit.checks_helpers import fixture


def test_acs_source_validation_on_switch_port_fails():
    bridges = parse_lspci_acs(fixture("lspci_acs_enabled.txt"))
    assert [b for b, _ in bridges] == ["15:00.0"]  # 16:00.0 has ACS capability but SrcValid-
    finding = judge_acs(bridges, "gpu001")
    assert finding.verdict is Verdict.FAIL and "BIOS" in finding.diagnosis


def test_no_acs_passes():
    assert judge_acs(parse_lspci_acs(fixture("lspci_acs_enabled.txt").replace("ACSCtl:\tSrcValid+", "ACSCtl:\tSrcValid-")), "n").verdict is Verdict.PASS


def test_not_lspci_output_is_rejected():
    import pytest

    with pytest.raises(ValueError):
        parse_lspci_acs("bash: lspci: command not found\n")
