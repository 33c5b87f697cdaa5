"""podsys bundle build|verify|iso|serve: the offline bundle for air-gapped sites."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from podsys.cli.common import command_group, console, err_console, guarded

BUNDLE_HELP = (
    "The offline bundle: a signed apt repository with the full dependency closure for the target OS, "
    "podsys's wheels and the add-on layers' PyPI wheels (wheels/addons/), iPXE and installer media, and vendor "
    "files from vendor.lock, and with --images the node images and deploy ramdisk (images/).\n\n"
    "Build it where there is internet (`podsys bundle build cluster.yaml --output bundle/`), check it "
    "(`podsys bundle verify bundle/`), carry it as an ISO (`podsys bundle iso bundle/ --output site.iso`); "
    "on the head: mount or copy it at /srv/podsys/bundle (packages.bundle_path), "
    "`pip install --no-index --find-links /srv/podsys/bundle/wheels podsys`, set "
    "`packages: {source: bundle}` and `podsys deploy`: the head's nginx then serves the bundle, and it is "
    "the only repository of the head and every node. `podsys bundle serve` serves a bundle by hand "
    "(a quick look, a test)."
)


def register(app: typer.Typer) -> None:
    bundle = command_group(app, "bundle", BUNDLE_HELP)
    bundle.command("build")(build)
    bundle.command("verify")(verify)
    bundle.command("iso")(iso)
    bundle.command("serve")(serve)


class _Bars:
    """One rich progress bar per phase (bytes for downloads, files for verify), shown from the
    first report on, so an early error prints only its own line."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.progress: Progress | None = None
        self.tasks: dict[str, int] = {}

    def __call__(self, label: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self.progress is None:
            self.progress = Progress(
                TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                TimeRemainingColumn(), console=err_console,
            )
            self.progress.start()
        if label not in self.tasks:
            self.tasks[label] = self.progress.add_task(label, total=total or 1)
        self.progress.update(self.tasks[label], completed=done, total=total or 1)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.stop()


@guarded
def build(
    manifest: Path = typer.Argument(Path("cluster.yaml"), help="cluster manifest (its OS, layers and stack decide the contents)"),
    output: Path = typer.Option(..., "--output", "-o", help="bundle directory; an existing one is updated and its downloads reused"),
    vendor_lock: Optional[Path] = typer.Option(
        None, "--vendor-lock", help="vendor.lock listing downloaded vendor files with sha256 (default: vendor.lock next to the manifest, if any)"
    ),
    vendor_dir: Optional[Path] = typer.Option(None, "--vendor-dir", help="where the vendor files are (default: vendor.lock's directory)"),
    only: Optional[List[str]] = typer.Option(
        None, "--only", help="bundle only these distribution packages (and their closure) instead of the layers' packages (wheels as usual); for quick test bundles"
    ),
    wheels: bool = typer.Option(
        True, "--wheels/--no-wheels",
        help="include podsys and its Python dependencies, and the add-on layers' PyPI wheels (notebooks, models), as wheels"
    ),
    installer: bool = typer.Option(True, "--installer/--no-installer", help="include the installer's netboot kernel and initrd"),
    recommends: bool = typer.Option(
        False, "--recommends/--no-recommends", help="also bundle Recommends (apt installs fine without them; much larger)"
    ),
    images: bool = typer.Option(
        False, "--images/--no-images",
        help="also carry the node images and deploy ramdisk the manifest's nodes install from (built first with "
        "`podsys image build`), so the site's head builds none"
    ),
    image_store: Optional[Path] = typer.Option(
        None, "--image-store", help="where the images are built (default: .podsys/images beside the manifest)"
    ),
    plan_only: bool = typer.Option(False, "--plan", help="print what the bundle would hold (packages, vendor files, wheel sets, images); fetch nothing"),
    as_json: bool = typer.Option(False, "--json", help="print the result as JSON"),
) -> None:
    """Build (or update) the offline bundle for a manifest.

    Resolves every distribution package the manifest's layers need with its full dependency
    closure for the TARGET release (a private apt configuration, not this machine's), downloads
    them (reusing what is already there), adds the vendor files of vendor.lock, builds a
    repository signed with the site key (generated on first build into DIR/keys, never served),
    downloads the add-on layers' PyPI wheels (notebooks: batchspawner; models: mlflow and
    mlflow-client) for the target's Python into DIR/wheels/addons/, with --images copies (hard-links)
    the manifest's node images and the deploy ramdisk from the image store into DIR/images/, and
    writes CONTENTS.sha256 (signed)."""
    from podsys.bundle.build import build_bundle, plan_bundle
    from podsys.cluster.load import load_cluster
    from podsys.cluster.web_checks import ADDON_WHEELS_CHECK

    # The add-on wheels are what this command fetches: their absence is no reason to refuse.
    cluster = load_cluster(manifest, skip=frozenset({ADDON_WHEELS_CHECK}))
    if vendor_lock is None and (cluster.base_dir / "vendor.lock").is_file():
        vendor_lock = cluster.base_dir / "vendor.lock"
    plan = plan_bundle(cluster, only=list(only) if only else None, wheels=wheels, installer=installer, recommends=recommends,
                       images=images, image_store=image_store)
    if plan_only:
        _print_plan(plan, as_json)
        return
    log = (lambda m: err_console.print(m, markup=False)) if not as_json else (lambda m: None)
    with _Bars(enabled=not as_json) as bars:
        result = build_bundle(plan, output, vendor_lock, vendor_dir, on_progress=bars, log=log)
    if as_json:
        print(json.dumps(result.as_dict(), indent=2))
        return
    console.print(
        f"bundle {result.bundle}: {result.packages} packages ({result.downloaded} downloaded, {result.reused} reused), "
        f"{result.wheels} wheels, {len(result.boot)} boot files, {result.vendor} vendor files; "
        f"{result.files} files, {result.bytes / 1e6:.1f} MB"
    )
    for wheel_set in result.addon_wheels:
        console.print(f"wheels/addons/{wheel_set.name}: {wheel_set.files} wheels "
                      f"({'downloaded' if wheel_set.downloaded else 'reused'})", markup=False)
    for image in result.images:
        console.print(f"{image['directory']}: {image['name']}, {image['bytes'] / 1e6:.1f} MB ({image['state']})",
                      markup=False)
    console.print(f"site key {result.fingerprint} (private key in {result.bundle / 'keys'}, 0600, not served)")


def _print_plan(plan, as_json: bool) -> None:
    if as_json:
        print(json.dumps(plan.as_dict(), indent=2))
        return
    console.print(f"bundle for {plan.cluster}: {plan.os_key}, layers {', '.join(plan.layers)}, stack {plan.stack_id or 'none'}",
                  markup=False)
    console.print(f"packages ({len(plan.packages)}, with their dependency closure): {' '.join(plan.packages)}", markup=False)
    for name, version, why in plan.vendor_packages:
        console.print(f"vendor package {name}{' ' + version if version else ''} ({why})", markup=False)
    for file, why in plan.vendor_sources:
        console.print(f"vendor file {file} ({why})", markup=False)
    console.print(f"podsys wheels: {'yes' if plan.wheels else 'no'}; installer: {'yes' if plan.installer else 'no'}",
                  markup=False)
    for wheel_set in plan.wheel_sets:
        console.print(f"wheels/addons/{wheel_set.name}/ (layer {wheel_set.layer}): {' '.join(wheel_set.requirements)}",
                      markup=False)
    if plan.node_images:
        if not plan.images:
            console.print("images: none (no node is installed from an image)", markup=False)
        for image in plan.images:
            nodes = f", {image.nodes} nodes" if image.nodes else ""
            console.print(f"{image.as_dict()['directory']}: {image.name}{nodes} (from {plan.image_store})", markup=False)


@guarded
def verify(
    bundle: Path = typer.Argument(..., help="bundle directory (or an extracted ISO)"),
    fingerprint: Optional[str] = typer.Option(None, "--fingerprint", help="fail unless the bundle's key has this fingerprint"),
    as_json: bool = typer.Option(False, "--json", help="print the result as JSON"),
) -> None:
    """Check every signature and checksum; name each bad file. Exit 1 if anything is wrong."""
    from podsys.bundle.build import verify_bundle
    from podsys.errors import InputError

    if not bundle.is_dir():
        raise InputError(f"{bundle}: not a directory")
    with _Bars(enabled=False) as bars:
        report = verify_bundle(bundle, fingerprint, on_progress=bars)
    if as_json:
        print(json.dumps({"bundle": str(bundle), "ok": report.ok, "checked": report.checked,
                          "fingerprint": report.fingerprint, "problems": report.problems}, indent=2))
    else:
        for problem in report.problems:
            err_console.print(f"BAD {problem}", markup=False)
        if report.ok:
            console.print(f"OK {bundle}: {report.checked} files, signatures valid (key {report.fingerprint})")
    if not report.ok:
        raise typer.Exit(1)


@guarded
def iso(
    bundle: Path = typer.Argument(..., help="bundle directory"),
    output: Path = typer.Option(..., "--output", "-o", help="ISO file to write"),
) -> None:
    """Write an ISO 9660 image (Rock Ridge + Joliet, not bootable) of the bundle, without its private key."""
    from podsys.bundle.build import write_iso

    tops = write_iso(bundle, output)
    console.print(f"wrote {output} ({output.stat().st_size / 1e6:.1f} MB): {', '.join(tops)}")


@guarded
def serve(
    bundle: Path = typer.Argument(..., help="bundle directory (or a mounted ISO)"),
    bind: str = typer.Option("127.0.0.1", "--bind", help="address to listen on (the head's provision address for nodes)"),
    port: int = typer.Option(8080, "--port", help="TCP port"),
) -> None:
    """Serve the bundle's repository, wheels, boot, vendor and image files over HTTP (never keys/).

    For a look or a test: `podsys deploy` with packages.source: bundle serves the bundle with
    nginx on the head itself."""
    from podsys.bundle.build import make_server

    server = make_server(bundle, bind, port)
    console.print(f"serving {bundle} on http://{bind}:{port}/ (repo/, wheels/, boot/, vendor/, images/); Ctrl-C stops")
    try:
        server.serve_forever()
    finally:
        server.server_close()
