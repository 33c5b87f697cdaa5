#!/usr/bin/env python3
"""Image distribution past one head link: a simulation, not a measurement (issue 12).

Nothing peer-to-peer or multicast is built in podsys; this computes what distributing one
image archive of S bytes to N nodes, all starting at once, would take under three strategies,
so README can compare them with the head-only projection from bench/provision.py's figures.

  head       every node pulls the whole archive from the head over HTTP (what podsys does).
             The head's link (B_head) is shared fairly among the downloads, each capped by the
             node's own link (B_node). Every download is the same size, so all run at
             min(B_node, B_head / N) and end together: time S / min(B_node, B_head / N), exact
             for this model. The head sends N archives.
  p2p        the archive in chunks of C bytes (K = ceil(S / C) chunks, taken as equal, S / K);
             a fixed fan-out tree, pipelined by chunk: the head feeds h nodes, every node
             forwards each chunk, once it has all of it, to its d children (--fanout, default
             2), its upload split evenly among them (B_node / d each). The head takes as many
             children as its link can feed at that rate: h = max(1, floor(B_head / (B_node / d))),
             at most N, each at min(B_node, B_head / h). Why a tree and not BitTorrent's
             rarest-first: every node at one depth is in the same state, so the simulation
             steps level by level (arrival of chunk k at depth L = max(arrival at the parent,
             end of chunk k-1 on this link) + one chunk time: O(depth x K) at any N, exact
             for the model, no randomness); a node needs no tracker, only its parent's
             address (a function of its index in the node table); and a node stops serving
             soon after it has the archive, so it can reboot. Its cost is that each node's
             upload is split d ways: a rarest-first swarm, which keeps every upload busy,
             approaches S / B_node plus log2(N) chunk times, up to about half the binary
             tree's time, so these figures are an upper bound for peer-to-peer. Inner links
             are charged B_node / d even where the last, partly filled level leaves a parent
             fewer children (again an upper bound). The head sends h archives, whatever N.
  multicast  one sender at min(B_head, B_node) sends the K chunks once; each receiver misses
             each chunk with probability p (--loss), independently. Receivers NACK what they
             missed; after --repair-wait seconds (collecting NACKs: an assumption, not
             measured) the sender multicasts every chunk that anyone missed again, and so on
             until no receiver misses anything. Figures are exact expectations of this model:
             a (receiver, chunk) pair is still missing after j sends with probability p^j, so
             the expected rounds are 1 + sum over j>=1 of (1 - (1 - p^j)^(N K)) and the chunks
             resent in round j+1 are K (1 - (1 - p^j)^N) on average.

All three ignore latency, TCP ramp-up and protocol overhead (links run at their full rate),
and disk and unpacking speed (inside the fixed term below). Per strategy and N, the output is
the time until the last node has the whole archive, the bytes the head sends, and the install
time: that time plus a fixed --boot term (default 180 s: POST, boot and writing the image,
about the 2 min 59 s power-on to SSH measured in the lab, README "Bare-metal provisioning").

Defaults are README's measured figures: S = 230 MB (the Debian 12 base+slurm+monitoring
image, zstd); B_head both the 25 GbE line rate and the head's measured nginx rate to 16
clients (881 MB/s), one table each; B_node = 25 GbE. Sizes take B, kB, MB, GB, KiB, MiB, GiB;
rates B/s, kB/s, MB/s, GB/s, MiB/s, GiB/s or Mbit, Gbit, GbE (bits per second); a bare
number is bytes or bytes/s. Runs in milliseconds at N = 10,000."""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

GBE_25 = 25e9 / 8  # bytes/s of a 25 GbE link at line rate
NGINX_16_CLIENTS = 881e6  # bytes/s: the head's nginx serving the image to 16 clients (README)
IMAGE_BYTES = 230e6  # the Debian 12 base+slurm+monitoring image, zstd (README)
CHUNK_BYTES = 4 * 2**20
BOOT_S = 180.0  # POST + boot + image write per node, in parallel on every node
FANOUT = 2  # the tree's children per node: 2 is fastest for K ~ 55 chunks (see tree_seconds)
LOSS = 0.01  # chance a receiver misses one multicast chunk: an assumption, not measured
REPAIR_WAIT_S = 0.1  # the multicast sender's wait for NACKs per repair round: an assumption
NODES = (100, 1000, 10000)

# Spelled as --help shows them; matched without regard to case.
SIZE_UNITS = {"": 1, "B": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}
RATE_UNITS = {"": 1, "B/s": 1, "kB/s": 1e3, "MB/s": 1e6, "GB/s": 1e9, "KiB/s": 2**10, "MiB/s": 2**20,
              "GiB/s": 2**30, "Mbit": 1e6 / 8, "Mbit/s": 1e6 / 8, "Gbit": 1e9 / 8, "Gbit/s": 1e9 / 8,
              "GbE": 1e9 / 8}
QUANTITY = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)(?:e(\d+))?\s*([a-z/]*)\s*$", re.IGNORECASE)


def chunk_count(size: float, chunk: float) -> int:
    return max(1, math.ceil(size / chunk))


def head_only(size: float, nodes: int, head_rate: float, node_rate: float) -> dict:
    """Every node pulls the whole archive from the head at once, the head's link fairly shared."""
    rate = min(node_rate, head_rate / nodes)
    return {"seconds": size / rate, "head_bytes": size * nodes}


def tree_levels(nodes: int, head_children: int, fanout: int) -> list[int]:
    """Nodes at each depth of the tree: the head's h children, then d times as many per level."""
    levels, width, placed = [], head_children, 0
    while placed < nodes:
        levels.append(min(width, nodes - placed))
        placed += levels[-1]
        width *= fanout
    return levels


def p2p_tree(size: float, nodes: int, head_rate: float, node_rate: float, chunk: float,
             fanout: int = FANOUT) -> dict:
    """Pipelined fan-out tree (module docstring): steps level by level, chunk by chunk."""
    chunks = chunk_count(size, chunk)
    piece = size / chunks
    # floor(B_head / (B_node / d)), kept from falling one short on a float just under a whole number
    head_children = min(nodes, max(1, int(head_rate * fanout / node_rate + 1e-9)))
    levels = tree_levels(nodes, head_children, fanout)
    link_seconds = [piece / min(node_rate, head_rate / head_children)]
    link_seconds += [piece / (node_rate / fanout)] * (len(levels) - 1)
    arrival = [0.0] * chunks  # the head holds every chunk at t = 0
    for per_chunk in link_seconds:
        link_free = 0.0  # when this level's link has finished the previous chunk
        for k in range(chunks):
            link_free = max(arrival[k], link_free) + per_chunk
            arrival[k] = link_free
    return {"seconds": arrival[-1], "head_bytes": size * head_children, "depth": len(levels),
            "head_children": head_children, "chunks": chunks}


def multicast(size: float, nodes: int, head_rate: float, node_rate: float, chunk: float,
              loss: float = LOSS, repair_wait: float = REPAIR_WAIT_S) -> dict:
    """One sender, NACK repair rounds; expected values of the model in the module docstring."""
    chunks = chunk_count(size, chunk)
    piece = size / chunks
    rate = min(head_rate, node_rate)
    rounds, resent = 1.0, 0.0
    if loss > 0:
        j = 1
        while True:
            missing = loss ** j  # one (receiver, chunk) pair still missing after j sends
            if missing == 0.0:
                break
            log_kept = math.log1p(-missing)
            more_rounds = -math.expm1(nodes * chunks * log_kept)  # P(any pair still missing)
            resent += chunks * -math.expm1(nodes * log_kept)  # chunks someone still misses
            rounds += more_rounds
            if more_rounds < 1e-12:
                break
            j += 1
    sent = chunks + resent
    return {"seconds": sent * piece / rate + (rounds - 1) * repair_wait, "head_bytes": sent * piece,
            "rounds": rounds, "chunks": chunks}


def simulate(size: float = IMAGE_BYTES, head_rates: tuple[float, ...] = (GBE_25, NGINX_16_CLIENTS),
             node_rate: float = GBE_25, nodes: tuple[int, ...] = NODES, chunk: float = CHUNK_BYTES,
             loss: float = LOSS, fanout: int = FANOUT, boot: float = BOOT_S,
             repair_wait: float = REPAIR_WAIT_S) -> list[dict]:
    """One row per (head rate, strategy, N): transfer seconds, head bytes, install seconds."""
    rows = []
    for head_rate in head_rates:
        for strategy in ("head", "p2p", "multicast"):
            for n in nodes:
                if strategy == "head":
                    result = head_only(size, n, head_rate, node_rate)
                elif strategy == "p2p":
                    result = p2p_tree(size, n, head_rate, node_rate, chunk, fanout)
                else:
                    result = multicast(size, n, head_rate, node_rate, chunk, loss, repair_wait)
                rows.append({"strategy": strategy, "nodes": n, "head_rate": head_rate, **result,
                             "install_seconds": result["seconds"] + boot})
    return rows


def _seconds(value: float) -> str:
    return f"{value:.3f}" if value < 1 else f"{value:.1f}" if value < 100 else f"{value:,.0f}"


def _bytes(value: float) -> str:
    return f"{value / 1e9:.2f} GB" if value < 1e10 else f"{value / 1e9:,.0f} GB"


def table(rows: list[dict], size: float, node_rate: float, chunk: float, loss: float, fanout: int,
          boot: float) -> str:
    lines = []
    for head_rate in dict.fromkeys(row["head_rate"] for row in rows):
        chunks = chunk_count(size, chunk)
        lines.append(f"head link {head_rate / 1e6:,.0f} MB/s, node links {node_rate / 1e6:,.0f} MB/s, image "
                     f"{size / 1e6:,.0f} MB ({chunks} chunks), + {boot:g} s boot/write")
        lines.append(f"  {'strategy':<10} {'nodes':>6} {'transfer s':>11} {'head sent':>11} {'install min':>12}  model")
        for row in rows:
            if row["head_rate"] != head_rate:
                continue
            if row["strategy"] == "p2p":
                note = f"tree: head feeds {row['head_children']}, fan-out {fanout}, depth {row['depth']}"
            elif row["strategy"] == "multicast":
                note = f"{row['rounds']:.2f} rounds expected at loss {loss:g}"
            else:
                note = "fair share of the head link"
            lines.append(f"  {row['strategy']:<10} {row['nodes']:>6,} {_seconds(row['seconds']):>11} "
                         f"{_bytes(row['head_bytes']):>11} {row['install_seconds'] / 60:>12.1f}  {note}")
    return "\n".join(lines)


def parse_quantity(text: str, units: dict[str, float], what: str) -> float:
    """'230MB', '4MiB', '25Gbit', '881MB/s', '3.125e9': a positive number; ValueError says why."""
    match = QUANTITY.match(text)
    by_lower = {unit.lower(): factor for unit, factor in units.items()}
    if not match or match.group(3).lower() not in by_lower:
        raise ValueError(f"{what} {text!r}: a number with one of the units {', '.join(u for u in units if u)}")
    value = float(match.group(1)) * 10 ** int(match.group(2) or 0) * by_lower[match.group(3).lower()]
    if value <= 0:
        raise ValueError(f"{what} {text!r}: must be more than 0")
    return value


def parse_nodes(text: str) -> tuple[int, ...]:
    try:
        nodes = tuple(int(part.replace("_", "")) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"--nodes {text!r}: a comma list of whole numbers, e.g. 100,1000") from None
    if not nodes or min(nodes) < 1:
        raise ValueError(f"--nodes {text!r}: every count must be 1 or more")
    return nodes


class OneLineErrorParser(argparse.ArgumentParser):
    """A bad option is one line on stderr and exit 2 (argparse prints the usage block too)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def main(argv: list[str] | None = None) -> int:
    parser = OneLineErrorParser(prog="distribution.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="230MB", help="the image archive (default 230MB)")
    parser.add_argument("--head-rate", default="25GbE,881MB/s", metavar="RATES",
                        help="the head's link, a comma list: one table each (default 25GbE,881MB/s)")
    parser.add_argument("--node-rate", default="25GbE", help="each node's link (default 25GbE)")
    parser.add_argument("--nodes", default="100,1000,10000", metavar="LIST",
                        help="node counts, a comma list (default 100,1000,10000)")
    parser.add_argument("--chunk", default="4MiB", help="p2p and multicast chunk (default 4MiB)")
    parser.add_argument("--loss", type=float, default=LOSS,
                        help=f"multicast: chance a receiver misses a chunk, 0 <= P < 1 (default {LOSS:g})")
    parser.add_argument("--repair-wait", type=float, default=REPAIR_WAIT_S, metavar="S",
                        help=f"multicast: seconds to collect NACKs per repair round (default {REPAIR_WAIT_S:g})")
    parser.add_argument("--fanout", type=int, default=FANOUT, help=f"p2p: children per node (default {FANOUT})")
    parser.add_argument("--boot", type=float, default=BOOT_S, metavar="S",
                        help=f"seconds of POST, boot and image write added to the transfer (default {BOOT_S:g})")
    parser.add_argument("--json", type=Path, metavar="FILE", dest="json_path", help="also write the rows to FILE")
    args = parser.parse_args(argv)
    try:
        size = parse_quantity(args.size, SIZE_UNITS, "--size")
        chunk = parse_quantity(args.chunk, SIZE_UNITS, "--chunk")
        head_rates = tuple(parse_quantity(part, RATE_UNITS, "--head-rate")
                           for part in args.head_rate.split(",") if part.strip())
        node_rate = parse_quantity(args.node_rate, RATE_UNITS, "--node-rate")
        nodes = parse_nodes(args.nodes)
    except ValueError as exc:
        parser.error(str(exc))
    if not head_rates:
        parser.error("--head-rate: give at least one rate")
    if not 0 <= args.loss < 1:
        parser.error(f"--loss {args.loss:g}: must be at least 0 and below 1")
    if args.fanout < 1:
        parser.error(f"--fanout {args.fanout}: must be 1 or more")
    if args.boot < 0 or args.repair_wait < 0:
        parser.error("--boot and --repair-wait must not be negative")
    rows = simulate(size, head_rates, node_rate, nodes, chunk, args.loss, args.fanout, args.boot, args.repair_wait)
    print(table(rows, size, node_rate, chunk, args.loss, args.fanout, args.boot))
    if args.json_path is not None:
        parameters = {"size": size, "head_rates": head_rates, "node_rate": node_rate, "nodes": nodes, "chunk": chunk,
                      "loss": args.loss, "repair_wait": args.repair_wait, "fanout": args.fanout, "boot": args.boot}
        args.json_path.write_text(json.dumps({"parameters": parameters, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
