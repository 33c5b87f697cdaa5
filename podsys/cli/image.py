"""podsys image build|list|show|rm: node images for image-based provisioning."""

from __future__ import annotations

import json
import shlex
from dataclasses import replace
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from podsys.cli.common import command_group, console, err_console, guarded

IMAGE_HELP = (
    "Node images: one root filesystem per distinct (OS, stack, hardware profile, layers), built once "
    "with mmdebstrap from the site's package source and written onto every node that shares it by the "
    "deploy ramdisk. An unchanged image is not rebuilt (its key is a hash of its inputs). No secrets "
    "inside: host keys, machine-id and the munge key are written per node."
)


def register(app: typer.Typer) -> None:
    image = command_group(app, "image", IMAGE_HELP)
    image.command("build")(build)
    image.command("list")(list_images)
    image.command("show")(show)
    image.command("rm")(remove)


def _store(cluster_store: Optional[Path], manifest: Optional[Path]):
    from podsys.layout import Workspace
    from podsys.provision.image_build import ImageStore

    if cluster_store is not None:
        return ImageStore(cluster_store)
    base = manifest.resolve().parent if manifest is not None else Path.cwd()
    return ImageStore(Workspace(base).images_dir)




STORE_HELP = "image store (default: .podsys/images beside the manifest)"


@guarded
def build(
    manifest: Path = typer.Argument(Path("cluster.yaml"), help="cluster manifest"),
    mirror: Optional[str] = typer.Option(
        None, "--mirror", help="package source to build from (default: what the nodes' packages come through: the "
        "upstream mirror via packages.proxy, or the head's /repo/ for a bundle)"),
    store: Optional[Path] = typer.Option(None, "--store", help=STORE_HELP),
    force: bool = typer.Option(False, "--force", help="rebuild even when an intact image with the same key exists"),
    plan: bool = typer.Option(False, "--plan", help="print each image's key, nodes and build commands; build nothing"),
    apt_option: Optional[List[str]] = typer.Option(
        None, "--apt-option", help="extra apt option for the build, e.g. 'Acquire::Check-Valid-Until \"false\"'"),
    ramdisk: bool = typer.Option(True, "--ramdisk/--no-ramdisk", help="also build the deploy ramdisk (kernel + initrd)"),
    epel_mirror: Optional[str] = typer.Option(
        None, "--epel-mirror", help="Rocky images: EPEL's tree, holding 9/Everything/x86_64/ and RPM-GPG-KEY-EPEL-9 "
        "(default: packages.epel, else http://dl.fedoraproject.org/pub/epel)"),
    ramdisk_mirror: Optional[str] = typer.Option(
        None, "--ramdisk-mirror", help="Debian mirror the deploy ramdisk is built from (default: the nodes' mirror "
        "for Debian sites, http://deb.debian.org/debian for Ubuntu and Rocky sites)"),
) -> None:
    """Build every image the manifest's PXE nodes with `provisioning.method: image` need.

    Debian and Ubuntu images are built with mmdebstrap, Rocky images with dnf --installroot (this
    head needs Debian's dnf and rpm packages); the deploy ramdisk is always Debian's."""
    from podsys.cluster.load import load_cluster
    from podsys.provision.image import cluster_images, dnf_commands, dnf_finish_script, mmdebstrap_command
    from podsys.provision.image_build import build_image
    from podsys.provision.image_source import ImageSource, image_source
    from podsys.provision.ramdisk import build_ramdisk

    cluster = load_cluster(manifest)
    images = cluster_images(cluster)
    target = _store(store, manifest)
    chosen = image_source(cluster)
    if mirror:  # vendor repositories direct too
        chosen = ImageSource(mirror, ramdisk_mirror=chosen.ramdisk_mirror, epel=chosen.epel)
    chosen = replace(chosen, epel=epel_mirror or chosen.epel, ramdisk_mirror=ramdisk_mirror or chosen.ramdisk_mirror)
    source = chosen.mirror
    extra_options = tuple(apt_option or ())
    if not images:
        console.print("no node is installed from an image (no PXE node with provisioning.method: image)")
        return
    for image in images:
        spec = image.spec
        if plan:
            console.print(f"{spec.name}  key {spec.key}  nodes {len(image.nodes)}", markup=False, highlight=False)
            if spec.family == "apt":
                # APT: the folder the build fetches the vendor keys into (build_image).
                cmds = [mmdebstrap_command(spec, source, "ROOT", "ROOT.packages.tsv",
                                           chosen.build_apt_options(spec, extra_options),
                                           chosen.build_repositories(spec), "APT")]
            else:
                # KEYS: the folder the build fetches the repositories' keys into (build_image).
                cmds = dnf_commands(spec, chosen.build_repositories(spec), "ROOT", "KEYS", chosen.proxy)
                cmds.append(["sh", "-e", "-c", dnf_finish_script(bool(spec.vendor_packages)), "finish", "ROOT"])
            for cmd in cmds:
                console.print("  " + shlex.join(cmd), markup=False, highlight=False, soft_wrap=True)
            continue
        record, built = build_image(image, target, source, lambda line: err_console.print(line, markup=False),
                                    force=force, apt_options=chosen.build_apt_options(spec, extra_options),
                                    vendor=chosen.build_repositories(spec), key_proxy=chosen.proxy)
        state = f"built in {record['build_seconds']} s" if built else "up to date"
        console.print(f"{record['name']}: {state}, {record['archive_bytes'] >> 20} MiB, sha256 {record['sha256'][:16]}, "
                      f"{record['packages']} packages, kernel {record['kernel']}", markup=False, highlight=False)
    if ramdisk and not plan:
        rd = build_ramdisk(target.root, chosen.ramdisk_source, lambda line: err_console.print(line, markup=False),
                           apt_options=(*chosen.apt_options, *extra_options), force=force)
        console.print(f"deploy ramdisk: kernel {rd['kernel']}, initrd {rd['initrd_bytes'] >> 20} MiB "
                      f"({target.root / ('ramdisk-' + rd['key'][:16])})", markup=False, highlight=False)


@guarded
def list_images(
    manifest: Optional[Path] = typer.Argument(None, help="cluster manifest (its store; default: ./.podsys/images)"),
    store: Optional[Path] = typer.Option(None, "--store", help=STORE_HELP),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Images in the store: name, key, size, nodes, built."""
    records = _store(store, manifest).records()
    if as_json:
        print(json.dumps(records, indent=2))
        return
    table = Table("image", "key", "MiB", "packages", "nodes", "built")
    for r in records:
        table.add_row(r["name"], r["key"][:16], str(r["archive_bytes"] >> 20), str(r["packages"]),
                      str(len(r["nodes"])), r["built"])
    console.print(table)


@guarded
def show(
    ref: str = typer.Argument(..., help="image name or key (prefix)"),
    manifest: Optional[Path] = typer.Option(None, "--manifest", "-m", help="cluster manifest (its store)"),
    store: Optional[Path] = typer.Option(None, "--store", help=STORE_HELP),
    packages: bool = typer.Option(False, "--packages", help="also list every package and version"),
) -> None:
    """One image's record (spec, sha256, sizes, nodes), optionally its package versions."""
    from podsys.provision.image_build import PACKAGES

    target = _store(store, manifest)
    record = target.resolve(ref)
    print(json.dumps(record, indent=2, sort_keys=True))
    if packages:
        print((target.folder(record["key"]) / PACKAGES).read_text(), end="")


@guarded
def remove(
    ref: str = typer.Argument(..., help="image name or key (prefix)"),
    manifest: Optional[Path] = typer.Option(None, "--manifest", "-m", help="cluster manifest (its store)"),
    store: Optional[Path] = typer.Option(None, "--store", help=STORE_HELP),
) -> None:
    """Remove an image from the store."""
    target = _store(store, manifest)
    record = target.resolve(ref)
    target.remove(record["key"])
    console.print(f"removed {record['name']}", markup=False, highlight=False)
