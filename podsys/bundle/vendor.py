"""vendor.lock: files a site downloaded itself (NVIDIA/Mellanox packages, pyxis and nccl-tests
tarballs, installer ISOs), each with its sha256. A missing or mismatched file is a one-line
input error naming vendor.lock's line.

    artifacts:
      - name: nvidia-driver-535
        file: nvidia-driver-535_535.230.02-0ubuntu1_amd64.deb
        sha256: 3f1c...
        url: https://developer.download.nvidia.com/...   # optional: where it came from
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from podsys.bundle.repo import sha256_file
from podsys.errors import InputError, Problem
from podsys.cluster.yaml_source import load_yaml_file

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class VendorArtifact:
    name: str
    file: str
    sha256: str
    url: str | None
    path: Path  # where the file is on this machine
    line: int | None

    @property
    def is_deb(self) -> bool:
        return self.file.endswith(".deb")


def load_vendor_lock(lock: Path, search_dir: Path | None = None) -> list[VendorArtifact]:
    """Parse and check every artifact (exists, sha256 matches). Raises InputError listing all."""
    data, smap = load_yaml_file(lock)
    search_dir = Path(search_dir) if search_dir else lock.parent
    problems: list[Problem] = []
    if not isinstance(data, dict) or not isinstance(data.get("artifacts", []), list):
        raise InputError(smap.problem(("artifacts",), "expected `artifacts:` with a list of {name, file, sha256}"))
    out: list[VendorArtifact] = []
    for i, item in enumerate(data.get("artifacts") or []):
        where = ("artifacts", i)
        if not isinstance(item, dict):
            problems.append(smap.problem(where, "expected a mapping with name, file, sha256"))
            continue
        unknown = set(item) - {"name", "file", "sha256", "url"}
        for key in sorted(unknown):
            problems.append(smap.problem((*where, key), f"unknown key {key!r} (name, file, sha256, url)"))
        missing = [k for k in ("name", "file", "sha256") if item.get(k) in (None, "")]
        for key in missing:
            problems.append(smap.problem(where, f"artifact needs {key}"))
        if missing:
            continue
        raw = item["sha256"]
        # An all-digit hash unquoted in YAML arrives as an int: pad it back to 64 digits.
        digest = f"{raw:064d}" if isinstance(raw, int) and not isinstance(raw, bool) else str(raw).lower()
        name, file = str(item["name"]), str(item["file"])
        if "/" in file or file.startswith("."):
            problems.append(smap.problem((*where, "file"), f"{file!r} must be a plain file name (looked up in {search_dir})"))
            continue
        if not SHA256_RE.match(digest):
            problems.append(smap.problem((*where, "sha256"), f"{name}: sha256 must be 64 hex digits"))
            continue
        path = search_dir / file
        if not path.is_file():
            problems.append(smap.problem((*where, "file"), f"{name}: {file} not found in {search_dir}"))
            continue
        actual = sha256_file(path)
        if actual != digest:
            problems.append(smap.problem((*where, "sha256"), f"{name}: {file} has sha256 {actual}, vendor.lock says {digest}"))
            continue
        out.append(VendorArtifact(name, file, digest, item.get("url"), path, smap.line_of(where)))
    if problems:
        raise InputError(problems)
    return out


def deb_fields(path: Path) -> dict[str, str]:
    """Package and Version of a .deb (dpkg-deb -f)."""
    proc = subprocess.run(["dpkg-deb", "-f", str(path), "Package", "Version"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise InputError(f"{path}: not a valid .deb ({proc.stderr.strip()})")
    fields = {}
    for line in proc.stdout.splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def upstream_version(deb_version: str) -> str:
    """1:4.2.3-1 -> 4.2.3; 535.230.02-0ubuntu1 -> 535.230.02; 2.18.5-1+cuda12.2 stays whole."""
    version = deb_version.split(":", 1)[-1]
    return version if "+cuda" in version else version.rsplit("-", 1)[0]
