"""bench/distribution.py: the properties its README figures rest on. Head-only grows linearly
past the head link, the p2p tree grows with log(N) and costs the head a bounded number of
archives, multicast without loss is one transfer and its repair-round expectations match a
Monte Carlo run of the same model; bad options are one line and exit 2."""

from __future__ import annotations

import importlib.util
import json
import math
import random
import subprocess
import sys

import pytest
from tests.conftest import REPO_ROOT

SCRIPT = REPO_ROOT / "bench" / "distribution.py"
spec = importlib.util.spec_from_file_location("bench_distribution", SCRIPT)
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)

S = bench.IMAGE_BYTES
LINK = bench.GBE_25
CHUNK = bench.CHUNK_BYTES
# (head rate, node rate): head as fast as a node, slower (the measured nginx rate), faster
RATES = [(LINK, LINK), (bench.NGINX_16_CLIENTS, LINK), (4 * LINK, LINK)]


def test_head_only_flat_while_the_head_link_has_room_then_linear_in_n():
    head, node = 10 * LINK, LINK  # room for 10 nodes at full node rate
    flat = [bench.head_only(S, n, head, node)["seconds"] for n in (1, 5, 10)]
    assert flat == [pytest.approx(S / node)] * 3
    t10 = bench.head_only(S, 10, head, node)["seconds"]
    for n in (20, 100, 1000, 10000):
        assert bench.head_only(S, n, head, node)["seconds"] == pytest.approx(t10 * n / 10)


def test_head_only_default_rates_linear_from_two_nodes():
    times = {n: bench.head_only(S, n, LINK, LINK)["seconds"] for n in (2, 100, 1000, 10000)}
    assert times[10000] / times[100] == pytest.approx(100)
    assert times[1000] == pytest.approx(1000 * S / LINK)


@pytest.mark.parametrize("head_rate,node_rate", RATES)
def test_p2p_with_one_node_equals_head_only(head_rate, node_rate):
    tree = bench.p2p_tree(S, 1, head_rate, node_rate, CHUNK)
    alone = bench.head_only(S, 1, head_rate, node_rate)
    assert tree["seconds"] == pytest.approx(alone["seconds"])
    assert tree["head_bytes"] == pytest.approx(alone["head_bytes"]) == S


@pytest.mark.parametrize("head_rate,node_rate", RATES)
def test_p2p_grows_with_log_n_not_n(head_rate, node_rate):
    times = {n: bench.p2p_tree(S, n, head_rate, node_rate, CHUNK)["seconds"] for n in (100, 1000, 10000)}
    assert times[100] <= times[1000] <= times[10000]
    assert times[10000] / times[100] < 2  # head-only: 100
    # each level of the tree adds one chunk time on a node's link (B_node / fan-out), no more
    chunks = bench.chunk_count(S, CHUNK)
    per_level = (S / chunks) / (node_rate / bench.FANOUT)
    depth = {n: bench.p2p_tree(S, n, head_rate, node_rate, CHUNK)["depth"] for n in times}
    assert depth[10000] - depth[100] == pytest.approx(math.log2(100), abs=1)
    assert times[10000] - times[100] == pytest.approx((depth[10000] - depth[100]) * per_level)


@pytest.mark.parametrize("head_rate,node_rate", RATES)
@pytest.mark.parametrize("fanout", [1, 2, 3])
def test_p2p_level_stepping_matches_the_pipeline_formula(head_rate, node_rate, fanout):
    # Store-and-forward pipeline: fill (one chunk time per link) + (K - 1) chunks at the slowest link.
    nodes = 500
    tree = bench.p2p_tree(S, nodes, head_rate, node_rate, CHUNK, fanout)
    piece = S / tree["chunks"]
    links = [piece / min(node_rate, head_rate / tree["head_children"])]
    links += [piece / (node_rate / fanout)] * (tree["depth"] - 1)
    assert tree["seconds"] == pytest.approx(sum(links) + (tree["chunks"] - 1) * max(links))


@pytest.mark.parametrize("nodes,head_children,fanout", [(1, 1, 2), (7, 2, 2), (10000, 2, 2), (100, 1, 1), (50, 3, 4)])
def test_tree_levels_place_every_node_once(nodes, head_children, fanout):
    levels = bench.tree_levels(nodes, head_children, fanout)
    assert sum(levels) == nodes
    assert all(size == head_children * fanout ** depth for depth, size in enumerate(levels[:-1]))


@pytest.mark.parametrize("head_rate,node_rate", RATES)
def test_head_bytes_p2p_bounded_head_only_n_archives(head_rate, node_rate):
    bound = max(1, head_rate * bench.FANOUT / node_rate) * S  # the head's children, each one archive
    tree = [bench.p2p_tree(S, n, head_rate, node_rate, CHUNK)["head_bytes"] for n in (100, 1000, 10000)]
    assert tree[0] == tree[1] == tree[2] <= bound + 1
    for n in (100, 1000, 10000):
        assert bench.head_only(S, n, head_rate, node_rate)["head_bytes"] == pytest.approx(n * S)


@pytest.mark.parametrize("head_rate,node_rate", RATES)
def test_multicast_without_loss_is_one_transfer(head_rate, node_rate):
    for n in (1, 100, 10000):
        result = bench.multicast(S, n, head_rate, node_rate, CHUNK, loss=0.0)
        assert result["rounds"] == 1
        assert result["head_bytes"] == pytest.approx(S)
        assert result["seconds"] == pytest.approx(S / min(head_rate, node_rate))


def test_multicast_loss_adds_repair_rounds_more_with_more_nodes():
    clean = bench.multicast(S, 100, LINK, LINK, CHUNK, loss=0.0)
    lossy = [bench.multicast(S, n, LINK, LINK, CHUNK, loss=0.01) for n in (100, 1000, 10000)]
    assert all(r["rounds"] > 2 for r in lossy)
    assert lossy[0]["rounds"] < lossy[1]["rounds"] < lossy[2]["rounds"]
    assert all(r["seconds"] > clean["seconds"] and r["head_bytes"] > S for r in lossy)
    # the repair waits are in the time: without them only the resent bytes remain
    unwaited = bench.multicast(S, 100, LINK, LINK, CHUNK, loss=0.01, repair_wait=0.0)
    assert unwaited["seconds"] == pytest.approx(unwaited["head_bytes"] / LINK)
    assert lossy[0]["seconds"] - unwaited["seconds"] == pytest.approx((lossy[0]["rounds"] - 1) * bench.REPAIR_WAIT_S)


def test_multicast_expectations_match_a_monte_carlo_run_of_the_model():
    # Small case simulated directly: every receiver misses each chunk it still needs with
    # probability p; a chunk is sent again while anyone still misses it.
    receivers, chunks, p, trials = 20, 10, 0.3, 3000
    rng = random.Random(12)
    total_rounds = total_sent = 0
    for _ in range(trials):
        missing = [sum(rng.random() < p for _ in range(receivers)) for _ in range(chunks)]
        rounds, sent = 1, chunks
        while any(missing):
            rounds += 1
            sent += sum(1 for m in missing if m)
            missing = [sum(rng.random() < p for _ in range(m)) for m in missing]
        total_rounds += rounds
        total_sent += sent
    model = bench.multicast(chunks * 1.0, receivers, 1.0, 1.0, 1.0, loss=p, repair_wait=0.0)
    assert model["chunks"] == chunks
    assert model["rounds"] == pytest.approx(total_rounds / trials, rel=0.03)
    assert model["head_bytes"] == pytest.approx(total_sent / trials, rel=0.03)


@pytest.mark.parametrize("text,units,value", [
    ("25GbE", bench.RATE_UNITS, 3.125e9), ("881MB/s", bench.RATE_UNITS, 881e6), ("3.125e9", bench.RATE_UNITS, 3.125e9),
    ("10 Gbit/s", bench.RATE_UNITS, 1.25e9), ("230MB", bench.SIZE_UNITS, 230e6), ("4MiB", bench.SIZE_UNITS, 4 * 2**20),
    ("4mib", bench.SIZE_UNITS, 4 * 2**20)])
def test_parse_quantity_units(text, units, value):
    assert bench.parse_quantity(text, units, "--x") == pytest.approx(value)


def run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60)


def test_default_run_prints_every_strategy_and_count_and_writes_json(tmp_path):
    out = tmp_path / "dist.json"
    result = run("--json", str(out))
    assert result.returncode == 0, result.stderr
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 2 * 3 * 3  # two head rates, three strategies, three node counts
    assert {(r["strategy"], r["nodes"]) for r in rows} == {(s, n) for s in ("head", "p2p", "multicast")
                                                           for n in (100, 1000, 10000)}
    assert all(r["install_seconds"] == pytest.approx(r["seconds"] + bench.BOOT_S) for r in rows)
    assert result.stdout.count("p2p") == 6 and "10,000" in result.stdout


@pytest.mark.parametrize("args", [["--loss", "1"], ["--loss", "-0.1"], ["--size", "0"], ["--size", "12XB"],
                                  ["--chunk", "four"], ["--head-rate", "fast"], ["--head-rate", ","],
                                  ["--node-rate", "-1GbE"], ["--nodes", "0"], ["--nodes", "100,x"],
                                  ["--fanout", "0"], ["--boot", "-5"], ["--bogus"], ["--loss", "lots"]])
def test_bad_options_exit_2_with_one_line(args):
    result = run(*args)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("distribution.py: error: "), result.stderr
