"""podsys.checks.gpudirect: which GPUDirect RDMA path a node runs, FAIL when neither.

Inputs replay real formats: /proc/modules (tests/fixtures/checks/proc_modules_no_peermem.txt,
whose header names its format), `modinfo -F license nvidia` (one line: "Dual MIT/GPL" for the
open kernel modules, "NVIDIA" for the proprietary ones) and `uname -r`."""

from podsys.checks.findings import Verdict
from podsys.checks.gpudirect import judge_gpudirect
from podsys.checks.versions import parse_modules
from tests.unit.checks.helpers import fixture, profile

NO_PEERMEM = parse_modules(fixture("proc_modules_no_peermem.txt"))
WITH_PEERMEM = NO_PEERMEM | {"nvidia_peermem"}


def test_peermem_loaded_passes_and_names_the_path():
    f = judge_gpudirect(WITH_PEERMEM, "NVIDIA", "5.15.0-119-generic", "gpu001", profile("hgx-h100-8gpu"))
    assert f.verdict is Verdict.PASS and f.value == "nvidia_peermem" and f.check == "versions.gpudirect"


def test_dmabuf_with_open_modules_passes_without_peermem():
    f = judge_gpudirect(NO_PEERMEM, "Dual MIT/GPL\n", "6.8.0-45-generic", "gpu001", profile("hgx-h100-8gpu"))
    assert f.verdict is Verdict.PASS and f.value == "dmabuf" and "DMA-BUF" in f.detail


def test_neither_path_fails_with_the_reasons():
    f = judge_gpudirect(NO_PEERMEM, "NVIDIA", "5.15.0-119-generic", "gpu001", profile("hgx-h100-8gpu"))
    assert f.verdict is Verdict.FAIL and f.value == "none"
    assert "license NVIDIA" in f.detail and "nvidia_peermem" in f.diagnosis
    old = judge_gpudirect(NO_PEERMEM, "Dual MIT/GPL", "5.4.0-200-generic", "gpu001", profile("hgx-h100-8gpu"))
    assert old.verdict is Verdict.FAIL and "older than 5.12" in old.detail


def test_no_driver_loaded_fails_before_anything_else():
    f = judge_gpudirect({"mlx5_ib", "mlx5_core"}, "", "6.8.0-45-generic", "gpu001", profile("hgx-h100-8gpu"))
    assert f.verdict is Verdict.FAIL and "nvidia module is not loaded" in f.detail


def test_skips_where_gpudirect_does_not_apply():
    assert judge_gpudirect(set(), None, None, "cpu001", profile("cpu-only")).verdict is Verdict.SKIP
    no_hca = profile("hgx-h100-8gpu").model_copy(update={"hca": None})
    assert judge_gpudirect(NO_PEERMEM, "NVIDIA", "6.8.0", "gpu001", no_hca).verdict is Verdict.SKIP
    assert judge_gpudirect(NO_PEERMEM, "NVIDIA", "6.8.0", "gpu001", None).verdict is Verdict.SKIP


def test_a_module_list_alone_cannot_show_dmabuf():
    f = judge_gpudirect(NO_PEERMEM, None, None, "gpu001", profile("hgx-h100-8gpu"))
    assert f.verdict is Verdict.SKIP and "modinfo -F license nvidia" in f.detail
    assert judge_gpudirect(WITH_PEERMEM, None, None, "gpu001", profile("hgx-h100-8gpu")).value == "nvidia_peermem"


def test_parse_kind_judges_the_versions_probe_output():
    from podsys.checks.registry import PARSE_KINDS

    judge = PARSE_KINDS["gpudirect"][1]
    [none] = judge(fixture("versions_raw_gpudirect_none.txt"), "gpu001", profile("hgx-h100-8gpu"), "")
    assert none.verdict is Verdict.FAIL and none.value == "none"
    [dmabuf] = judge(fixture("versions_raw_gpudirect_dmabuf.txt"), "gpu001", profile("hgx-h100-8gpu"), "")
    assert dmabuf.verdict is Verdict.PASS and dmabuf.value == "dmabuf"
    # the modules kind no longer demands peermem: a DMA-BUF node's module list passes
    modules = PARSE_KINDS["modules"][1](fixture("proc_modules_no_peermem.txt"), "gpu001", profile("hgx-h100-8gpu"), "")
    assert {f.check: f.verdict for f in modules} == {"versions.modules": Verdict.PASS, "versions.gpudirect": Verdict.SKIP}
