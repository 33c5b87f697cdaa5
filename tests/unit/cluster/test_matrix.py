from datetime import date

import pytest

from podsys.cluster.matrix import check_combination, load_matrix, parse_matrix, pick_stack, version_at_least, version_key
from podsys.cluster.hardware import builtin_profiles

MATRIX = load_matrix()
P = builtin_profiles()
ALL_LAYERS = ["base", "gpu", "infiniband", "slurm", "monitoring"]


def rules(violations):
    return sorted({v.rule for v in violations})


def test_version_ordering():
    assert version_key("570.133.20") > version_key("570.26")
    assert version_at_least("535.230.02", "535.54.03")
    assert not version_at_least("535.230.02", "550.90.07")
    assert version_key("2.26.2-1+cuda12.8") == (2, 26, 2, 1)


def test_matrix_has_required_branches():
    branches = {s.branch for s in MATRIX.stacks.values()}
    assert {"R535", "R550", "R570", "R580"} <= branches


@pytest.mark.parametrize("stack", list(MATRIX.stacks))
def test_every_shipped_stack_is_internally_consistent(stack):
    s = MATRIX.stack(stack)
    assert s.fabric_manager == s.driver
    assert s.nccl_cuda == s.cuda
    for os_key in s.os:
        assert rules(check_combination(MATRIX, s, os_key, [P["hgx-h100-8gpu"]], ["base", "gpu"])) == []


def test_h200_with_r535_refused():
    v = check_combination(MATRIX, MATRIX.stack("r535-cuda12.2"), "ubuntu-22.04", [P["hgx-h200-8gpu"]], ALL_LAYERS)
    assert rules(v) == ["gpu_minimum"]
    assert any("H200 needs driver >= 550.90.07" in str(x) for x in v)
    assert all(x.source for x in v)


def test_b200_with_r550_refused_including_nvlsm():
    v = check_combination(MATRIX, MATRIX.stack("r550-cuda12.4"), "ubuntu-22.04", [P["hgx-b200-8gpu"]], ALL_LAYERS)
    assert rules(v) == ["blackwell_needs_nvlsm", "gpu_minimum"]


def test_cuda_12_8_with_driver_535_refused():
    stack = MATRIX.stack("r535-cuda12.2").model_copy(update={"cuda": "12.8"})
    v = check_combination(MATRIX, stack, "ubuntu-22.04", [P["hgx-h100-8gpu"]], ALL_LAYERS)
    assert "cuda_min_driver" in rules(v)
    assert "nccl_matches_cuda" in rules(v)  # the R535 NCCL build is for CUDA 12.2
    assert any("CUDA 12.8 needs driver >= 570.26" in str(x) for x in v)


def test_fabric_manager_must_equal_driver():
    stack = MATRIX.stack("r570-cuda12.8").model_copy(update={"fabric_manager": "570.133.20"})
    assert rules(check_combination(MATRIX, stack, "ubuntu-22.04", [P["hgx-h100-8gpu"]], ["base", "gpu"])) == [
        "fabric_manager_equals_driver"
    ]


def test_nvswitch_board_needs_fabric_manager():
    stack = MATRIX.stack("r570-cuda12.8").model_copy(update={"fabric_manager": None})
    assert "nvswitch_needs_fabric_manager" in rules(
        check_combination(MATRIX, stack, "ubuntu-22.04", [P["hgx-h100-8gpu"]], ["base", "gpu"])
    )
    # a PCIe board without NVSwitch does not need one
    assert rules(check_combination(MATRIX, stack, "ubuntu-22.04", [P["pcie-l40s"]], ["base", "gpu"])) == []


def test_ofed_must_support_os_unless_inbox():
    stack = MATRIX.stack("r580-cuda13.0").model_copy(update={"os": ("ubuntu-22.04", "ubuntu-20.04")})
    assert rules(check_combination(MATRIX, stack, "ubuntu-20.04", [P["hgx-h100-8gpu"]], ALL_LAYERS)) == ["ofed_supports_os"]
    assert check_combination(MATRIX, stack, "ubuntu-20.04", [P["hgx-h100-8gpu"]], ALL_LAYERS, infiniband_stack="inbox") == []
    # without the infiniband layer OFED does not matter
    assert check_combination(MATRIX, stack, "ubuntu-20.04", [P["hgx-h100-8gpu"]], ["base", "gpu"]) == []


def test_debian_12_keeps_the_stack_ofed():
    # Finding 5: DOCA >= 2.5.2 publishes debian12.5; Debian nodes are not forced to inbox.
    for sid in ("r570-cuda12.8", "r580-cuda13.0"):
        assert check_combination(MATRIX, MATRIX.stack(sid), "debian-12", [P["hgx-h100-8gpu"]], ALL_LAYERS) == []


def test_r535_is_not_pinned_for_debian_12():
    # Finding 6: NVIDIA's debian12 CUDA repository starts at CUDA 12.3; CUDA 12.2 is not there.
    stack = MATRIX.stack("r535-cuda12.2")
    assert "debian-12" not in stack.os
    assert rules(check_combination(MATRIX, stack, "debian-12", [], ["base"])) == ["stack_supports_os"]


def test_auto_picks_newest_valid_stack():
    stack, refused = pick_stack(MATRIX, "ubuntu-22.04", [P["hgx-h100-8gpu"]], ALL_LAYERS)
    assert stack.id == "r580-cuda13.0" and refused == {}


def test_auto_skips_refused_stacks_and_reports_why():
    data = {"stacks": {}, "rules": MATRIX.rules}
    for sid in ("r535-cuda12.2", "r550-cuda12.4"):
        data["stacks"][sid] = MATRIX.stack(sid).model_dump(mode="json", exclude={"id"})
    small = parse_matrix(data)
    before_eol = date(2025, 1, 1)
    stack, refused = pick_stack(small, "ubuntu-22.04", [P["hgx-h200-8gpu"]], ALL_LAYERS, today=before_eol)
    assert stack.id == "r550-cuda12.4"
    stack, refused = pick_stack(small, "ubuntu-22.04", [P["hgx-b200-8gpu"]], ALL_LAYERS, today=before_eol)
    assert stack is None and set(refused) == {"r535-cuda12.2", "r550-cuda12.4"}


def test_auto_never_picks_a_stack_past_its_end_of_life():
    # Finding 14: on 2026-11-28 only R580 is supported; R535/R550/R570 stay selectable by name.
    today = date(2026, 11, 28)
    assert [s.id for s in MATRIX.newest_first() if not s.past_end_of_life(today)] == ["r580-cuda13.0"]
    data = {"stacks": {sid: MATRIX.stack(sid).model_dump(mode="json", exclude={"id"}) for sid in ("r535-cuda12.2", "r570-cuda12.8")},
            "rules": MATRIX.rules}
    stack, refused = pick_stack(parse_matrix(data), "ubuntu-22.04", [P["hgx-h100-8gpu"]], ALL_LAYERS, today=today)
    assert stack is None
    assert [v.rule for v in refused["r570-cuda12.8"]] == ["end_of_life"]
    assert "past its end of life (2026-02-28)" in str(refused["r570-cuda12.8"][0])
    # pinned by name, an EOL stack is still accepted by the matrix
    assert check_combination(MATRIX, MATRIX.stack("r570-cuda12.8"), "ubuntu-22.04", [P["hgx-h100-8gpu"]], ALL_LAYERS) == []
    stack, _ = pick_stack(MATRIX, "ubuntu-22.04", [P["hgx-h100-8gpu"]], ALL_LAYERS, today=date(2026, 1, 1))
    assert stack.id == "r580-cuda13.0"


def test_ubuntu_24_04_excludes_older_stacks():
    stack, refused = pick_stack(MATRIX, "ubuntu-24.04", [P["hgx-h100-8gpu"]], ["base", "gpu"])
    assert stack.id == "r580-cuda13.0"
    v = check_combination(MATRIX, MATRIX.stack("r550-cuda12.4"), "ubuntu-24.04", [], ["base"])
    assert rules(v) == ["stack_supports_os"]


def test_unknown_gpu_model_is_refused():
    profile = P["hgx-h100-8gpu"].model_copy(update={"gpu": P["hgx-h100-8gpu"].gpu.model_copy(update={"model": "X999"})})
    v = check_combination(MATRIX, MATRIX.stack("r580-cuda13.0"), "ubuntu-22.04", [profile], ["base", "gpu"])
    assert rules(v) == ["gpu_minimum"] and "X999 is not in the matrix" in str(v[0])


def test_every_rule_has_a_source():
    for name, rule in MATRIX.rules.items():
        assert rule.get("source"), name
