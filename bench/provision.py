#!/usr/bin/env python3
"""Image provisioning benchmark (root): what one head can do for N nodes.

  1. image build, cold (mmdebstrap + pack; from the image record, or --rebuild) and warm (an
     unchanged manifest: the key matches, the archive's sha256 is checked, nothing is built);
  2. the head's image serving: nginx (the head's web server) serving image.tar.zst from the
     store to N parallel HTTP clients on loopback, aggregate MB/s for N = 1, 4, 16;
  3. from these, the time to image 100 and 1,000 nodes through one 25 GbE head link.

Power-on to SSH for VMs is measured by tests/integration/test_provision_image_qemu.py (it
prints the install time per firmware); TCG emulation makes it CPU-bound here, not
network-bound, so it does not extrapolate to hardware and is not used in the projection."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

LINK_GBPS = 25  # the head's provision link in the projection
# Per node, after the image is on disk: GRUB, identity, reboot, firmware POST and the OS boot.
# Server POST dominates (typically 2-5 min on GPU servers; 3 min used here).
POST_AND_BOOT_S = 180


NGINX_CONF = """\
worker_processes 2;
pid {dir}/nginx.pid;
error_log {dir}/error.log;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  sendfile on;
  tcp_nopush on;
  server {{
    listen 127.0.0.1:{port};
    root {root};
  }}
}}
"""


def serve_throughput(store: Path, key: str, clients: int, port: int) -> float:
    """Aggregate MB/s of `clients` parallel curl downloads of the image through nginx."""
    work = Path(tempfile.mkdtemp(prefix="podsys-bench-nginx-"))
    conf = work / "nginx.conf"
    conf.write_text(NGINX_CONF.format(dir=work, port=port, root=store))
    subprocess.run(["nginx", "-c", str(conf)], check=True)
    try:
        time.sleep(0.5)
        url = f"http://127.0.0.1:{port}/{key}/image.tar.zst"
        size = (store / key / "image.tar.zst").stat().st_size

        def fetch(_):
            subprocess.run(["curl", "-fsS", "-o", "/dev/null", url], check=True)

        start = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(fetch, range(clients)))
        elapsed = time.perf_counter() - start
        return clients * size / elapsed / 1e6
    finally:
        pid = int((work / "nginx.pid").read_text())
        subprocess.run(["nginx", "-c", str(conf), "-s", "stop"], check=False, capture_output=True)
        deadline = time.monotonic() + 10
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        shutil.rmtree(work, ignore_errors=True)


def projection(image_bytes: int, nodes: int, serve_bytes_per_s: float) -> float:
    """Seconds to image `nodes` nodes at once from one head: every node pulls the whole
    compressed image, at the head's serving rate, then POSTs and boots in parallel."""
    return nodes * image_bytes / serve_bytes_per_s + POST_AND_BOOT_S


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("manifest", type=Path)
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--mirror", required=True)
    args = parser.parse_args()
    cmd = [sys.executable, "-m", "podsys.cli.main", "image", "build", str(args.manifest), "--store", str(args.store),
           "--mirror", args.mirror, "--apt-option", 'Acquire::Check-Valid-Until "false"']
    subprocess.run(cmd, check=True, cwd=REPO, capture_output=True)  # cold, unless already built
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO, capture_output=True)
    warm = time.perf_counter() - start
    listed = json.loads(subprocess.run([sys.executable, "-m", "podsys.cli.main", "image", "list", "--store",
                                        str(args.store), "--json"], check=True, cwd=REPO, capture_output=True,
                                       text=True).stdout)
    record = listed[0]
    print(f"image {record['name']}: {record['archive_bytes'] / 1e6:.0f} MB compressed, "
          f"{record['unpacked_bytes'] / 1e6:.0f} MB unpacked, {record['packages']} packages")
    print(f"image build: cold {record['build_seconds']:.0f} s (mmdebstrap + pack), warm {warm:.1f} s (key match + sha256)")
    rates = {}
    for clients in (1, 4, 16):
        rates[clients] = serve_throughput(args.store, record["key"], clients, port=18100 + clients)
        print(f"nginx serving the image to {clients:2d} parallel clients (loopback): {rates[clients]:.0f} MB/s aggregate")
    link = LINK_GBPS * 1e9 / 8
    for nodes in (100, 1000):
        at_link = projection(record["archive_bytes"], nodes, link)
        at_measured = projection(record["archive_bytes"], nodes, rates[16] * 1e6)
        print(f"projection, {nodes:4d} nodes: {LINK_GBPS} GbE line rate {at_link / 60:.1f} min; "
              f"at this machine's measured 16-client rate {at_measured / 60:.1f} min "
              f"(both + {POST_AND_BOOT_S} s POST/boot)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
