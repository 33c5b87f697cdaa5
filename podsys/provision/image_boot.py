"""Boot files for nodes installed from an image: their iPXE install script boots the deploy
ramdisk with everything it needs on the kernel command line, and the head's public keys are
served once for all nodes (boot/keys/authorized_keys).

Pure: which image and ramdisk a node gets follows from the manifest and podsys's own scripts
(their keys are hashes of inputs), not from what happens to be built on the head."""

from __future__ import annotations

from podsys.cluster.model import Cluster
from podsys.provision.image import cluster_images
from podsys.provision.ramdisk import ramdisk_key

IMAGES_URL_PATH = "images"  # under the boot tree: HeadPaths.image_root is <boot_root>/images
KEYS_FILE = "keys/authorized_keys"
CONSOLE_ARGS = "console=tty0 console=ttyS0,115200n8"


def ramdisk_url(boot_url: str) -> str:
    return f"{boot_url}/{IMAGES_URL_PATH}/ramdisk-{ramdisk_key()[:16]}"


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


def image_nodes(cluster: Cluster) -> dict[str, tuple[str, str]]:
    """node name -> (image key, image name) for every node installed from an image."""
    return {name: (img.spec.key, img.spec.name) for img in cluster_images(cluster) for name in img.nodes}


def keys_file(keys: list[str]) -> str:
    return "".join(f"{k}\n" for k in keys)
