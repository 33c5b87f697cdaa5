"""`podsys layers`: every layer a manifest can name, core and add-on, with what it installs; and
the add-ons' own verbs (`podsys accounting backup|restore`, `podsys images import|list`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from podsys.cli.common import command_group, console, guarded
from podsys.cli.deploy import FOUND_MANIFEST_ARG, find_manifest


LAYERS_HELP = (
    "List every layer `layers:` may name: the core ones (base, gpu, infiniband, slurm, "
    "monitoring, container) and the add-ons (accounting, storage, training), with the "
    "roles each runs, the packages and services it installs, the manifest section that "
    "configures it and the test that proves it."
)


def register(app: typer.Typer) -> None:
    app.command("layers", help=LAYERS_HELP)(layers)
    accounting = command_group(app, "accounting", "The accounting add-on: back up and restore Slurm's accounting database.")
    accounting.command("backup", help="Dump the accounting database (consistent snapshot, slurmdbd keeps "
                                      "running) from the head into FILE, created 0600.")(accounting_backup)
    accounting.command("restore", help="Load a dump made by `podsys accounting backup` into the head's "
                                       "accounting database (slurmdbd is stopped meanwhile).")(accounting_restore)
    images = command_group(app, "images", "The training add-on's site images (enroot squashfs files on shared storage).")
    images.command("import", help="Put an enroot image into training.image_dir, where every node sees it: "
                                  "a squashfs .sqsh file (copied through the head) or a registry image "
                                  "docker://[USER@][REGISTRY#]IMAGE[:TAG] (`enroot import` on the head).")(images_import)
    images.command("list", help="The images in training.image_dir.")(images_list)


@guarded
def layers(as_json: bool = typer.Option(False, "--json", help="print the catalogue as JSON")) -> None:
    from podsys.cluster.layer_catalogue import CATALOGUE

    if as_json:
        print(json.dumps([info.as_dict() for info in CATALOGUE], indent=2))
        return
    for info in CATALOGUE:
        section = f"manifest section: {info.section}" if info.section else "no manifest section"
        console.print(f"[bold]{info.name}[/bold] ({info.kind}; {section})", highlight=False)
        console.print(f"  {info.summary}", markup=False, highlight=False)
        for label, items in (("roles", info.roles), ("packages", info.packages), ("services", info.services)):
            console.print(f"  {label + ':':10} {', '.join(items) or '-'}", markup=False, highlight=False)
        console.print(f"  {'smoke:':10} {info.smoke}", markup=False, highlight=False)


@guarded
def accounting_backup(
    output: Path = typer.Option(..., "--output", "-o", help="local file the dump is written to"),
    manifest: Optional[Path] = FOUND_MANIFEST_ARG,
) -> None:
    from podsys.addons.accounting import backup
    from podsys.cluster.load import load_cluster

    size = backup(load_cluster(find_manifest(manifest)), output)
    console.print(f"accounting database saved to {output} ({size} bytes)", markup=False, highlight=False)


@guarded
def accounting_restore(
    dump: Path = typer.Option(..., "--input", "-i", help="dump written by `podsys accounting backup`"),
    manifest: Optional[Path] = FOUND_MANIFEST_ARG,
) -> None:
    from podsys.addons.accounting import restore
    from podsys.cluster.load import load_cluster

    restore(load_cluster(find_manifest(manifest)), dump)
    console.print(f"accounting database restored from {dump}", markup=False, highlight=False)


@guarded
def images_import(
    source: str = typer.Argument(..., help="a .sqsh image file, or docker://[USER@][REGISTRY#]IMAGE[:TAG]"),
    manifest: Optional[Path] = FOUND_MANIFEST_ARG,
    name: Optional[str] = typer.Option(None, "--name", help="image name (default: the file name without "
                                                             ".sqsh; for a registry image enroot's IMAGE+TAG)"),
) -> None:
    from podsys.cluster.load import load_cluster
    from podsys.addons.training_images import import_from_registry, import_image, is_registry_uri

    cluster = load_cluster(find_manifest(manifest))
    if is_registry_uri(source):
        target = import_from_registry(cluster, source, name)
    else:
        target = import_image(cluster, Path(source), name)
    console.print(f"imported {source} as {target}", markup=False, highlight=False)


@guarded
def images_list(
    manifest: Optional[Path] = FOUND_MANIFEST_ARG,
    as_json: bool = typer.Option(False, "--json", help="print the list as JSON"),
) -> None:
    from podsys.cluster.load import load_cluster
    from podsys.addons.training_images import list_images

    found = list_images(load_cluster(find_manifest(manifest)))
    if as_json:
        print(json.dumps([{"name": n, "bytes": s} for n, s in found], indent=2))
        return
    for image, size in found:
        console.print(f"{image}  {size} bytes", markup=False, highlight=False)
