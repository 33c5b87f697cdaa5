"""podsys.provision.partition: the install disk's plan per firmware, its sfdisk script, and
the size check that refuses a disk too small before anything is written."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from podsys.provision.partition import (
    BIOS_BOOT_GUID,
    ESP_GUID,
    GiB,
    MiB,
    PartitionError,
    check_fits,
    partition_device,
    partition_plan,
    plan_files,
    root_bytes_needed,
    sfdisk_script,
)

IMAGE = 900 * MiB


def test_uefi_plan_has_an_esp_then_root():
    plan = partition_plan("uefi", IMAGE)
    assert [p.number for p in plan.parts] == [1, 2]
    assert plan.esp is not None and plan.esp.type_guid == ESP_GUID and plan.esp.filesystem == "vfat"
    assert plan.esp.size_bytes == 512 * MiB
    assert plan.root.number == 2 and plan.root.size_bytes is None and plan.root.filesystem == "ext4"


def test_bios_plan_has_a_bios_boot_partition_and_no_esp():
    plan = partition_plan("bios", IMAGE)
    assert plan.esp is None
    assert plan.parts[0].type_guid == BIOS_BOOT_GUID and plan.parts[0].filesystem is None
    assert plan.parts[0].size_bytes == 1 * MiB


def test_minimum_disk_covers_image_headroom_and_both_partitions():
    uefi, bios = partition_plan("uefi", IMAGE), partition_plan("bios", IMAGE)
    assert root_bytes_needed(IMAGE) >= IMAGE * 1.25 + GiB
    assert uefi.min_disk_bytes - bios.min_disk_bytes == 511 * MiB
    assert uefi.min_disk_bytes % MiB == 0
    assert partition_plan("uefi", 2 * IMAGE).min_disk_bytes > uefi.min_disk_bytes


def test_too_small_disk_is_refused_with_both_sizes():
    plan = partition_plan("bios", IMAGE)
    check_fits(plan, plan.min_disk_bytes)
    with pytest.raises(PartitionError, match=r"disk of 1024 MiB is smaller than the \d+ MiB"):
        check_fits(plan, 1 * GiB)


@pytest.mark.parametrize("bad", [("efi", IMAGE), ("uefi", 0)])
def test_bad_inputs_are_refused(bad):
    with pytest.raises(PartitionError):
        partition_plan(*bad)


def test_sfdisk_script_text():
    assert sfdisk_script(partition_plan("uefi", IMAGE)) == (
        "label: gpt\nfirst-lba: 2048\n\n"
        f'size=512MiB, type={ESP_GUID}, name="esp"\n'
        'type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, name="root"\n'
    )


@pytest.mark.skipif(shutil.which("sfdisk") is None, reason="sfdisk (fdisk package) not installed")
@pytest.mark.parametrize("firmware", ["bios", "uefi"])
def test_real_sfdisk_applies_the_script_to_a_disk_file(tmp_path, firmware):
    plan = partition_plan(firmware, IMAGE)
    disk = tmp_path / "disk.img"
    with open(disk, "wb") as f:
        f.truncate(plan.min_disk_bytes)
    subprocess.run(["sfdisk", "--quiet", str(disk)], input=sfdisk_script(plan), text=True, check=True)
    dump = subprocess.run(["sfdisk", "--json", str(disk)], capture_output=True, text=True, check=True).stdout

    parts = json.loads(dump)["partitiontable"]["partitions"]
    assert [p["type"] for p in parts] == [plan.parts[0].type_guid, plan.parts[1].type_guid]
    assert parts[0]["start"] == 2048 and parts[0]["size"] * 512 == plan.parts[0].size_bytes
    assert parts[1]["size"] * 512 >= root_bytes_needed(IMAGE)


@pytest.mark.parametrize("disk, expected", [
    ("/dev/sda", "/dev/sda2"), ("/dev/vda", "/dev/vda2"), ("/dev/nvme0n1", "/dev/nvme0n1p2"),
    ("/dev/mmcblk0", "/dev/mmcblk0p2"), ("/dev/disk/by-id/wwn-0x5000c5", "/dev/disk/by-id/wwn-0x5000c5-part2"),
])
def test_partition_device_names(disk, expected):
    assert partition_device(disk, 2) == expected


def test_plan_files_for_the_head():
    files = plan_files(IMAGE)
    assert set(files) == {"partitions-bios.sfdisk", "partitions-bios.min-bytes",
                          "partitions-uefi.sfdisk", "partitions-uefi.min-bytes"}
    assert int(files["partitions-uefi.min-bytes"]) == partition_plan("uefi", IMAGE).min_disk_bytes
