"""`podsys images import|list`: the site's enroot images on shared storage.

enroot runs squashfs images (`enroot import` writes them as NAME.sqsh; `enroot create` and
pyxis's `srun --container-image=/path/NAME.sqsh` read them; enroot README,
https://github.com/NVIDIA/enroot/blob/master/doc/usage.md). Importing from a file copies a
squashfs image into `training.image_dir` through the head (the directory is on shared storage,
so every node sees it), written under a temporary name and renamed when complete."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from podsys.cluster.model import Cluster
from podsys.errors import InputError, Problem
from podsys.deploy.head_exec import run_on_head

SQUASHFS_MAGIC = b"hsqs"  # little-endian squashfs superblock magic 0x73717368
IMAGE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")


def _image_dir(cluster: Cluster) -> str:
    if "training" not in cluster.manifest.layers:
        raise InputError(Problem(str(cluster.manifest_path), None, "layers", "layer 'training' is not enabled"))
    return cluster.manifest.training.image_dir


def image_name(file: Path, name: str | None) -> str:
    chosen = name or file.name.removesuffix(".sqsh")
    if not IMAGE_NAME_RE.match(chosen):
        raise InputError(Problem("command line", None, "--name",
                                 f"{chosen!r} is not an image name (letters, digits, '.', '_', '+', '-')"))
    return chosen


def import_image(cluster: Cluster, file: Path, name: str | None = None) -> str:
    """Copy a squashfs image file into the site image directory; returns its path on the cluster."""
    directory = _image_dir(cluster)
    file = Path(file)
    if not file.is_file():
        raise InputError(Problem(str(file), None, "", "file not found"))
    with open(file, "rb") as handle:
        if handle.read(4) != SQUASHFS_MAGIC:
            raise InputError(Problem(str(file), None, "", "not a squashfs image (enroot images are squashfs: "
                                                         "`enroot import docker://IMAGE` makes one)"))
        handle.seek(0)
        target = f"{directory}/{image_name(file, name)}.sqsh"
        partial = f"{directory}/.{image_name(file, name)}.sqsh.partial"
        command = (f"set -e; test -d {shlex.quote(directory)}; cat > {shlex.quote(partial)}; "
                   f"chmod 0644 {shlex.quote(partial)}; mv -f {shlex.quote(partial)} {shlex.quote(target)}")
        run_on_head(cluster, f"bash -c {shlex.quote(command)}", stdin=handle)
    return target


def list_images(cluster: Cluster) -> list[tuple[str, int]]:
    """(name, size in bytes) of every image in the site image directory."""
    directory = _image_dir(cluster)
    out = run_on_head(cluster, f"find {shlex.quote(directory)} -maxdepth 1 -name '*.sqsh' -printf '%f %s\\n'")
    rows = [line.rsplit(" ", 1) for line in out.decode().splitlines() if line.strip()]
    return sorted((n.removesuffix(".sqsh"), int(s)) for n, s in rows)
