"""bench/provision.py --lab-vms's parsing, without a lab: the image line of deploy's stderr, the
per-VM power-on-to-SSH seconds of its --json summary, and the table with the 2-at-once / 1-VM
ratio. The stderr lines are as `podsys deploy` printed them on a lab run."""

from __future__ import annotations

import importlib.util

import pytest
from tests.conftest import REPO_ROOT

SCRIPT = REPO_ROOT / "bench" / "provision.py"
spec = importlib.util.spec_from_file_location("bench_provision", SCRIPT)
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)

COLD = ("debian-12-cpu-only-e186e476ab9e: packing (780 MiB unpacked)\n"
        "image debian-12-cpu-only-e186e476ab9e (2 nodes): built in 172.4 s from http://deb.debian.org/debian "
        "via http://10.254.165.197:3142/\n"
        "deploy ramdisk ramdisk-c0580177c635d0b7: kernel 6.1.0-50-amd64\n")
WARM = "image debian-12-cpu-only-e186e476ab9e (2 nodes): up to date\ndeploy ramdisk ramdisk-c0580177c635d0b7: kernel 6.1.0-50-amd64\n"


def node(name, phase="reachable", elapsed=0.0, stage="boot from disk"):
    return {"node": name, "phase": phase, "stage": stage, "bytes": None, "elapsed": elapsed, "message": ""}


def summary(*nodes):
    return {"installs": {"nodes": list(nodes), "came_up": [n["node"] for n in nodes if n["phase"] == "reachable"],
                         "did_not": [], "powered_by_hand": [], "batches": []}}


def test_parse_image_line_cold_build_among_other_stderr_lines():
    assert bench.parse_image_line(COLD) == {"image": "debian-12-cpu-only-e186e476ab9e", "nodes": 2,
                                            "built_s": 172.4, "state": "built"}


def test_parse_image_line_up_to_date_and_one_node():
    assert bench.parse_image_line(WARM)["built_s"] is None
    assert bench.parse_image_line(WARM)["state"] == "up to date"
    one = bench.parse_image_line("image x-1 (1 node): built in 83 s from a mirror")
    assert (one["nodes"], one["built_s"]) == (1, 83.0)


@pytest.mark.parametrize("text", ["", "deploy ramdisk ramdisk-c0580177c635d0b7: kernel 6.1.0-50-amd64",
                                  "debian-12-cpu-only-e186e476ab9e: mmdebstrap bookworm from http://deb.debian.org/debian",
                                  "image debian-12 built in 3 s"])
def test_parse_image_line_none_without_the_image_line(text):
    assert bench.parse_image_line(text) is None


def test_vm_elapsed_per_installed_node_none_when_not_reachable():
    s = summary(node("vm01", elapsed=301.5), node("vm02", "failed", 120.0, "partition"))
    assert bench.vm_elapsed(s) == {"vm01": 301.5, "vm02": None}


@pytest.mark.parametrize("s", [None, {}, {"installs": None}, summary()])
def test_vm_elapsed_empty_when_nothing_installed(s):
    assert bench.vm_elapsed(s) == {}


def steps(first=(300.0, 320.0), one=(200.0,), both=(310.0, 330.0)):
    return [
        {"step": bench.FIRST, "wall_s": 900.0, "image": bench.parse_image_line(COLD),
         "elapsed": dict(zip(("vm01", "vm02"), first))},
        {"step": bench.ONE, "wall_s": 400.0, "image": bench.parse_image_line(WARM), "elapsed": dict(zip(("vm01",), one))},
        {"step": bench.BOTH, "wall_s": 500.0, "image": bench.parse_image_line(WARM),
         "elapsed": dict(zip(("vm01", "vm02"), both))},
        {"step": bench.AGAIN, "wall_s": 120.0, "image": bench.parse_image_line(WARM), "elapsed": {}},
    ]


def test_ratio_table_ratios_are_mean_two_at_once_over_one_alone():
    table, ratios = bench.ratio_table(steps())
    assert ratios == {"both": pytest.approx(320.0 / 200.0), "first": pytest.approx(310.0 / 200.0)}
    lines = table.splitlines()
    assert lines[0].split() == ["step", "wall", "s", "image", "vm01", "s", "vm02", "s"]
    first = next(line for line in lines if line.startswith(bench.STEP_TITLES[bench.FIRST]))
    assert "900.0" in first and "built 172.4 s" in first and first.split()[-2:] == ["300.0", "320.0"]
    one = next(line for line in lines if line.startswith(bench.STEP_TITLES[bench.ONE]))
    assert "up to date" in one and one.split()[-2:] == ["200.0", "-"]  # vm02 was not installed
    again = next(line for line in lines if line.startswith(bench.STEP_TITLES[bench.AGAIN]))
    assert again.split()[-2:] == ["-", "-"]
    assert lines[-2].endswith(": 1.60") and lines[-1].endswith(": 1.55")


def test_ratio_table_no_ratio_when_a_vm_failed_or_a_step_is_missing():
    _, ratios = bench.ratio_table(steps(both=(310.0, None)))
    assert ratios["both"] is None and ratios["first"] == pytest.approx(1.55)
    table, ratios = bench.ratio_table(steps(both=(310.0, None)))
    assert "failed" in next(line for line in table.splitlines() if line.startswith(bench.STEP_TITLES[bench.BOTH]))
    table, ratios = bench.ratio_table(steps()[:1])  # the run stopped after the first deploy
    assert ratios == {"both": None, "first": None} and table.splitlines()[-1].endswith("n/a")
    _, ratios = bench.ratio_table(steps(one=(None,)))
    assert ratios == {"both": None, "first": None}


def test_podsys_children_get_this_checkout_on_pythonpath(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    assert bench.podsys_env()["PYTHONPATH"].split(":") == [str(REPO_ROOT), "/elsewhere"]
    monkeypatch.delenv("PYTHONPATH")
    assert bench.podsys_env()["PYTHONPATH"] == str(REPO_ROOT)


def test_lab_vms_refuses_a_manifest_and_image_options_refuse_keep(monkeypatch, capsys):
    for argv in (["--lab-vms", "cluster.yaml"], ["--lab-vms", "--store", "s"], ["cluster.yaml", "--keep", "d"], []):
        monkeypatch.setattr("sys.argv", ["provision.py", *argv])
        with pytest.raises(SystemExit) as exited:
            bench.main()
        assert exited.value.code == 2, argv


def test_steps_run_in_order_from_the_first_deploy():
    assert bench.parse_steps("first,one") == ["first", "one"]
    assert bench.parse_steps(" first , both,again ") == ["first", "both", "again"]
    for bad, why in (("one", "must start with first"), ("first,warm", "unknown step 'warm'"),
                     ("first,both,one", "in the order"), ("first,one,one", "in the order"), ("", "must start")):
        with pytest.raises(ValueError, match=why):
            bench.parse_steps(bad)


def test_steps_outside_lab_vms_or_unknown_exit_2(monkeypatch, capsys):
    for argv in (["cluster.yaml", "--steps", "first"], ["--lab-vms", "--steps", "first,nope"]):
        monkeypatch.setattr("sys.argv", ["provision.py", *argv])
        with pytest.raises(SystemExit) as exited:
            bench.main()
        assert exited.value.code == 2, argv
    assert "unknown step 'nope'" in capsys.readouterr().err
