"""Boot files for nodes installed from an image: their iPXE install script boots the deploy
ramdisk with everything it needs on the kernel command line, and the head's public keys are
served once for all nodes (boot/keys/authorized_keys).

Pure: which image and ramdisk a node gets follows from the manifest and podsys's own scripts
(their keys are hashes of inputs), not from what happens to be built on the head."""

from __future__ import annotations

from podsys.cluster.model import Cluster
from podsys.provision.image import NodeImage
from podsys.provision.ramdisk import ramdisk_key

IMAGES_URL_PATH = "images"  # under the boot tree: HeadPaths.image_root is <boot_root>/images
# What the ramdisk fetches from an image's folder (podsys/data/ramdisk/functions.sh), in the
# order the provision role copies them: the archive last, so a node that boots while a new
# image is copied fails its checksum rather than writing half an archive.
IMAGE_FILES = ("image.sha256", "partitions-bios.sfdisk", "partitions-bios.min-bytes",
               "partitions-uefi.sfdisk", "partitions-uefi.min-bytes", "image.json", "image.tar.zst")
RAMDISK_FILES = ("vmlinuz", "initrd.img")
SERVED_FILE = "provision/images.json"
KEYS_FILE = "keys/authorized_keys"
CONSOLE_ARGS = "console=tty0 console=ttyS0,115200n8"


def ramdisk_folder() -> str:
    return f"ramdisk-{ramdisk_key()[:16]}"


def ramdisk_url(boot_url: str) -> str:
    return f"{boot_url}/{IMAGES_URL_PATH}/{ramdisk_folder()}"


def image_url(boot_url: str, key: str) -> str:
    return f"{boot_url}/{IMAGES_URL_PATH}/{key}"


def ramdisk_args(cluster: Cluster, node, image_key: str, boot_url: str) -> str:
    """The deploy ramdisk's kernel command line for one node (podsys/data/ramdisk/init)."""
    m = cluster.manifest
    args = [CONSOLE_ARGS, f"podsys.image={image_url(boot_url, image_key)}",
            f"podsys.status={node.callback_url}", f"podsys.keys={boot_url}/{KEYS_FILE}",
            f"podsys.disk={node.disk}", f"podsys.hostname={node.name}", f"podsys.fqdn={node.fqdn}",
            f"podsys.mac={node.mac}", f"podsys.ip={node.ip}/{node.prefix}",
            f"podsys.head_ip={m.head.address}", f"podsys.head_name={m.head.hostname}"]
    if node.gateway:
        args.append(f"podsys.gateway={node.gateway}")
    if node.dns:
        args.append(f"podsys.dns={','.join(node.dns)}")
    return " ".join(args)


def image_nodes(images: list[NodeImage]) -> dict[str, tuple[str, str]]:
    """node name -> (image key, image name) for every node installed from one of `images`
    (cluster_images: computed once per render, shared with served_images)."""
    return {name: (img.spec.key, img.spec.name) for img in images for name in img.nodes}


def keys_file(keys: list[str]) -> str:
    return "".join(f"{k}\n" for k in keys)


def served_images(images: list[NodeImage]) -> dict:
    """What the head must serve under its images/ folder before any node installs: each of the
    manifest's `images` (cluster_images) and the deploy ramdisk, as (store folder, file) pairs.
    The provision role copies them from the image store (`.podsys/images`, beside the build)."""
    names = {img.spec.key: img.spec.name for img in images}
    folders = list(names)
    if not folders:
        return {"images": [], "folders": [], "files": []}
    files = [[key, name] for key in folders for name in IMAGE_FILES]
    files += [[ramdisk_folder(), name] for name in RAMDISK_FILES]
    return {"images": [{"key": k, "name": names[k]} for k in folders],
            "folders": [*folders, ramdisk_folder()], "files": files}
