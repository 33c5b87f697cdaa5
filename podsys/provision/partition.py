"""The install disk's partition plan: pure, per firmware, rendered as an sfdisk script.

GPT in both cases (sfdisk(8) "label: gpt"):
  uefi: 1 EFI system partition (FAT32, /boot/efi) + 2 root (ext4, the rest)
  bios: 1 BIOS boot partition (raw, GRUB's core.img on GPT) + 2 root (ext4, the rest)
Partition type GUIDs from the UEFI specification / the Discoverable Partitions Specification
(uapi-group.org/specifications/specs/discoverable_partitions_specification): ESP
C12A7328-F81F-11D2-BA4B-00A0C93EC93B, BIOS boot 21686148-6449-6E6F-744E-656564454649, Linux
x86-64 root 4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709.

The deploy ramdisk fetches the script for its firmware, compares the disk's size with
`min_disk_bytes` (refusing, with the numbers, a disk too small) and applies it to the
manifest's install disk only."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

MiB = 1 << 20
GiB = 1 << 30

ESP_GUID = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
BIOS_BOOT_GUID = "21686148-6449-6E6F-744E-656564454649"
ROOT_X86_64_GUID = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"

ALIGN = 1 * MiB  # first partition at 1 MiB, everything 1 MiB aligned
ESP_BYTES = 512 * MiB
BIOS_BOOT_BYTES = 1 * MiB
GPT_BACKUP_BYTES = 1 * MiB  # the secondary GPT at the disk's end (33 sectors; 1 MiB keeps alignment)
# Room above the unpacked image on the root file system: ext4 metadata (about 1.6 % of the
# partition at the default inode ratio plus the 5 % reserved blocks) plus logs, Slurm spool and
# package updates. A disk must hold all of it, or the install stops before touching it.
ROOT_HEADROOM = 1.25
ROOT_SLACK_BYTES = 1 * GiB

Firmware = Literal["uefi", "bios"]


class PartitionError(ValueError):
    pass


@dataclass(frozen=True)
class Part:
    number: int
    label: str
    type_guid: str
    size_bytes: int | None  # None: the rest of the disk
    filesystem: str | None  # vfat / ext4 / None (raw)
    mountpoint: str | None


@dataclass(frozen=True)
class PartitionPlan:
    firmware: Firmware
    parts: tuple[Part, ...]
    min_disk_bytes: int

    @property
    def root(self) -> Part:
        return next(p for p in self.parts if p.mountpoint == "/")

    @property
    def esp(self) -> Part | None:
        return next((p for p in self.parts if p.mountpoint == "/boot/efi"), None)


def root_bytes_needed(image_unpacked_bytes: int) -> int:
    needed = int(image_unpacked_bytes * ROOT_HEADROOM) + ROOT_SLACK_BYTES
    return -(-needed // MiB) * MiB


def partition_plan(firmware: str, image_unpacked_bytes: int) -> PartitionPlan:
    """The plan for a node with `firmware` ("uefi" or "bios") receiving an image that unpacks
    to `image_unpacked_bytes`."""
    if image_unpacked_bytes <= 0:
        raise PartitionError(f"image size must be positive, got {image_unpacked_bytes}")
    if firmware == "uefi":
        first = Part(1, "esp", ESP_GUID, ESP_BYTES, "vfat", "/boot/efi")
    elif firmware == "bios":
        first = Part(1, "bios-boot", BIOS_BOOT_GUID, BIOS_BOOT_BYTES, None, None)
    else:
        raise PartitionError(f"unknown firmware {firmware!r} (expected uefi or bios)")
    root = Part(2, "root", ROOT_X86_64_GUID, None, "ext4", "/")
    min_disk = ALIGN + first.size_bytes + root_bytes_needed(image_unpacked_bytes) + GPT_BACKUP_BYTES
    return PartitionPlan(firmware, (first, root), min_disk)  # type: ignore[arg-type]


def check_fits(plan: PartitionPlan, disk_bytes: int) -> None:
    if disk_bytes < plan.min_disk_bytes:
        raise PartitionError(f"disk of {disk_bytes // MiB} MiB is smaller than the {plan.min_disk_bytes // MiB} MiB "
                             "this image needs")


def sfdisk_script(plan: PartitionPlan) -> str:
    """sfdisk(8) input: `label: gpt`, then one line per partition in order; the last one with
    no size takes the rest of the disk. Sizes in bytes become KiB/MiB suffixes sfdisk reads."""
    lines = ["label: gpt", f"first-lba: {ALIGN // 512}", ""]
    for part in plan.parts:
        fields = []
        if part.size_bytes is not None:
            fields.append(f"size={part.size_bytes // MiB}MiB")
        fields += [f"type={part.type_guid}", f'name="{part.label}"']
        lines.append(", ".join(fields))
    return "\n".join(lines) + "\n"


def partition_device(disk: str, number: int) -> str:
    """The kernel's name for partition `number` of `disk`: sda -> sda2, nvme0n1 -> nvme0n1p2,
    mmcblk0 -> mmcblk0p2, /dev/disk/by-id/X -> X-part2 (udev's by-id/by-path links)."""
    if disk.startswith("/dev/disk/"):
        return f"{disk}-part{number}"
    return f"{disk}p{number}" if disk[-1].isdigit() else f"{disk}{number}"


def plan_files(image_unpacked_bytes: int) -> dict[str, str]:
    """What the head serves next to an image for the ramdisk: one sfdisk script per firmware
    and its minimum disk size in bytes."""
    files = {}
    for firmware in ("bios", "uefi"):
        plan = partition_plan(firmware, image_unpacked_bytes)
        files[f"partitions-{firmware}.sfdisk"] = sfdisk_script(plan)
        files[f"partitions-{firmware}.min-bytes"] = f"{plan.min_disk_bytes}\n"
    return files
