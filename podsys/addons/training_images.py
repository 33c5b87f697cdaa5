"""`podsys images import|list`: the site's enroot images on shared storage.

enroot runs squashfs images (`enroot import` writes them as NAME.sqsh; `enroot create` and
pyxis's `srun --container-image=/path/NAME.sqsh` read them; enroot README,
https://github.com/NVIDIA/enroot/blob/master/doc/usage.md). Importing from a file copies a
squashfs image into `training.image_dir` through the head (the directory is on shared storage,
so every node sees it), written under a temporary name and renamed when complete. Importing
from a registry runs `enroot import -o PARTIAL docker://[USER@][REGISTRY#]IMAGE[:TAG]` on the
head (enroot doc/cmd/import.md, https://github.com/NVIDIA/enroot/blob/master/doc/cmd/import.md)
into the same temporary name; enroot comes with the `container` layer, and a head without it
is named as the reason, never worked around."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from podsys.cluster.model import Cluster
from podsys.errors import InputError, Problem
from podsys.deploy.head_exec import run_on_head

from podsys.errors import PodsysError

SQUASHFS_MAGIC = b"hsqs"  # little-endian squashfs superblock magic 0x73717368
IMAGE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
REGISTRY_SCHEME = "docker://"
ENROOT_MISSING = "enroot is not installed on the head"
# enroot's docker:// URI: [USER@][REGISTRY#]IMAGE[:TAG]; IMAGE is a registry path (lower case,
# digits, separators), TAG a Docker tag (distribution's reference grammar).
REGISTRY_URI_RE = re.compile(r"^docker://(?:(?P<user>[^@#/\s]+)@)?(?:(?P<registry>[A-Za-z0-9.-]+(?::\d+)?)#)?"
                             r"(?P<image>[a-z0-9]+(?:[._/-][a-z0-9]+)*)(?::(?P<tag>[\w][\w.-]{0,127}))?$")


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


def is_registry_uri(source: str) -> bool:
    return str(source).startswith(REGISTRY_SCHEME)


def registry_image_name(uri: str, name: str | None) -> str:
    """The site name of a registry image: --name, else enroot's own default for the URI
    (`docker://nvidia/pytorch:24.01-py3` -> `nvidia+pytorch+24.01-py3`)."""
    match = REGISTRY_URI_RE.match(uri)
    if not match:
        raise InputError(Problem("command line", None, "SOURCE",
                                 f"{uri!r} is not an enroot registry URI (docker://[USER@][REGISTRY#]IMAGE[:TAG])"))
    if name:
        return image_name(Path(name), name)
    image, tag = match["image"], match["tag"]
    return image_name(Path("x"), (image + (f":{tag}" if tag else "")).replace("/", "+").replace(":", "+"))


def registry_import_command(directory: str, uri: str, image: str) -> str:
    """The head-side script: enroot must be there; the image lands under a temporary name and
    is renamed when enroot has finished, like a file import."""
    target, partial = f"{directory}/{image}.sqsh", f"{directory}/.{image}.sqsh.partial"
    q = shlex.quote
    return (f"set -e; if ! command -v enroot >/dev/null; then echo '{ENROOT_MISSING}' >&2; exit 3; fi; "
            f"test -d {q(directory)}; rm -f {q(partial)}; "
            f"trap 'rm -f {q(partial)}' EXIT; enroot import -o {q(partial)} -- {q(uri)}; "
            f"chmod 0644 {q(partial)}; mv -f {q(partial)} {q(target)}; trap - EXIT")



def import_from_registry(cluster: Cluster, uri: str, name: str | None = None) -> str:
    """`enroot import` a registry image on the head into the site image directory."""
    directory = _image_dir(cluster)
    image = registry_image_name(uri, name)
    try:
        run_on_head(cluster, f"bash -c {shlex.quote(registry_import_command(directory, uri, image))}")
    except PodsysError as err:
        if ENROOT_MISSING in str(err):
            raise PodsysError(f"{ENROOT_MISSING}: a registry import needs it there (the `container` "
                              f"layer installs enroot); import a .sqsh file made elsewhere instead") from None
        raise
    return f"{directory}/{image}.sqsh"


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
