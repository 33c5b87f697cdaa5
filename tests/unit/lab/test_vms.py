"""The lab VMs' plan (names, MACs, addresses, BMC endpoints), their lab.yaml group and BMC
section, and QEMU's command lines (podsys/lab/plan.py, podsys/lab/vms.py). No root needed."""

from ipaddress import IPv4Address, IPv4Network

import pytest
import yaml

from podsys.cluster.load import load_cluster
from podsys.lab import plan as lab_plan, vms as lab_vms
from tests.conftest import podsys


def test_vm_plan_is_stable_and_keeps_out_of_the_containers_way(tmp_path):
    plan = lab_plan.plan_lab(tmp_path, 3, slot=0x1234, vms=3)
    assert plan == lab_plan.plan_lab(tmp_path, 3, slot=0x1234, vms=3)
    assert lab_plan.LabPlan.from_dict(plan.to_dict()) == plan
    prov = IPv4Network(plan.provision_cidr)
    bmc = IPv4Network(plan.bmc_cidr)
    assert [v.hostname for v in plan.vms] == ["vm01", "vm02", "vm03"]
    assert [v.firmware for v in plan.vms] == ["bios", "uefi", "bios"]
    assert [v.address for v in plan.vms] == [str(prov.network_address + h) for h in (211, 212, 213)]
    # The largest container lab ends at .210: VMs never take a container node's address.
    biggest = lab_plan.plan_lab(tmp_path, lab_plan.MAX_NODES, slot=0x1234, vms=lab_plan.MAX_VMS)
    container_addrs = {n.address for n in biggest.nodes}
    assert not container_addrs & {v.address for v in biggest.vms}
    assert all(IPv4Address(v.address) in prov for v in biggest.vms)
    # BMCs: one /24 per lab in the BMC pool, the same host offset as the provision address.
    assert bmc.subnet_of(lab_plan.BMC_POOL) and bmc.prefixlen == 24 and not bmc.overlaps(prov)
    assert [v.bmc_address for v in plan.vms] == [str(bmc.network_address + h) for h in (211, 212, 213)]
    assert {v.bmc_port for v in plan.vms} == {623}
    assert [v.bmc_mc for v in plan.vms] == [0x20, 0x22, 0x24]
    macs = [v.mac for v in plan.vms] + [n.mac for n in plan.nodes]
    assert len(set(macs)) == len(macs)
    assert plan.vms[0].mac == "02:70:12:34:04:01"
    assert all(len(v.tap) <= 15 and v.machine.startswith("pl1234-") for v in plan.vms)


def test_vm_plans_of_two_labs_differ(tmp_path):
    a = lab_plan.plan_lab(tmp_path / "a", 1, slot=1, vms=2)
    b = lab_plan.plan_lab(tmp_path / "b", 1, slot=2, vms=2)
    assert a.bmc_cidr != b.bmc_cidr
    assert not {v.mac for v in a.vms} & {v.mac for v in b.vms}
    assert not {v.machine for v in a.vms} & {v.machine for v in b.vms}


def test_vm_count_bounds_and_no_bmc_network_without_vms(tmp_path):
    with pytest.raises(ValueError, match="--vms"):
        lab_plan.plan_lab(tmp_path, 1, vms=lab_plan.MAX_VMS + 1)
    with pytest.raises(ValueError, match="--vms"):
        lab_plan.plan_lab(tmp_path, 1, vms=-1)
    plain = lab_plan.plan_lab(tmp_path, 1, slot=5)
    assert plain.vms == () and plain.bmc_cidr == ""
    assert "[Route]" not in lab_plan.networkd_units(plain, plain.head)["20-uplink.network"]
    # A state file written before VMs existed still loads.
    old = plain.to_dict()
    del old["vms"], old["bmc_cidr"]
    assert lab_plan.LabPlan.from_dict(old) == plain


def test_head_routes_the_bmc_network_through_its_uplink(tmp_path):
    plan = lab_plan.plan_lab(tmp_path, 1, slot=5, vms=2)
    uplink = lab_plan.networkd_units(plan, plan.head)["20-uplink.network"]
    assert f"[Route]\nDestination={plan.bmc_cidr}\nScope=link\n" in uplink
    assert "[Route]" not in lab_plan.networkd_units(plan, plan.compute[0])["10-provision.network"]


def _lab_yaml(tmp_path, plan):
    (tmp_path / ".podsys/lab/ssh").mkdir(parents=True)
    (tmp_path / ".podsys/lab/bmc").mkdir(parents=True)
    for f in ("ssh/id_ed25519", "ssh/known_hosts"):
        (tmp_path / ".podsys/lab" / f).write_text("x\n")
    password = tmp_path / ".podsys/lab/bmc/password"
    password.write_text("not-shown\n")
    password.chmod(0o600)
    text = lab_plan.lab_manifest_text(plan, "http://deb.debian.org/debian", ".podsys/lab/ssh/id_ed25519",
                                      ".podsys/lab/ssh/known_hosts", ".podsys/lab/bmc/password")
    (tmp_path / "lab.yaml").write_text(text)
    return tmp_path / "lab.yaml", text


def test_lab_yaml_puts_the_vms_in_an_image_group_with_their_bmcs(tmp_path):
    plan = lab_plan.plan_lab(tmp_path, 2, slot=7, vms=2)
    path, text = _lab_yaml(tmp_path, plan)
    assert "not-shown" not in text
    data = yaml.safe_load(text)
    group = data["node_groups"][1]
    assert group["name"] == "vms" and group["hosts"] == "vm[01-02]"
    assert group["provisioning"] == {"method": "image"} and "pxe" not in group  # PXE: the default
    assert data["bmc"] == {"protocol": "ipmi", "username": "podsys", "password_file": ".podsys/lab/bmc/password",
                           "cipher_suite": 3}
    assert data["networks"]["bmc"] == {"cidr": plan.bmc_cidr}
    assert data["slurm"]["partitions"][0]["node_groups"] == ["compute", "vms"]

    cluster = load_cluster(path)  # the real loader: addresses, MACs, BMC addresses resolve
    by_name = {n.name: n for n in cluster.nodes}
    for vm in plan.vms:
        node = by_name[vm.hostname]
        assert (node.provision_ip, node.mac, node.bmc_ip) == (vm.address, vm.mac, vm.bmc_address)
    assert by_name["node01"].provision_ip == plan.compute[0].address


def test_lab_yaml_without_vms_is_unchanged(tmp_path):
    plan = lab_plan.plan_lab(tmp_path, 1, slot=7)
    data = lab_plan.lab_manifest(plan, "http://m/debian", "k", "kh")
    assert "bmc" not in data and "bmc" not in data["networks"] and len(data["node_groups"]) == 1
    with pytest.raises(ValueError, match="BMC password"):
        lab_plan.lab_manifest(lab_plan.plan_lab(tmp_path, 1, slot=7, vms=1), "http://m/debian", "k", "kh")


# --- QEMU -------------------------------------------------------------------------------------


def _arg_after(argv, flag, startswith=""):
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == flag and argv[i + 1].startswith(startswith)]


def test_qemu_argv_boot_order_per_boot_device(tmp_path):
    plan = lab_plan.plan_lab(tmp_path, 1, slot=7, vms=2)
    vm = plan.vms[0]
    pxe = lab_vms.qemu_argv(plan, vm, tmp_path, "pxe")
    default = lab_vms.qemu_argv(plan, vm, tmp_path, "default")
    nic = lambda argv: _arg_after(argv, "-device", "virtio-net-pci")[0]
    disk = lambda argv: _arg_after(argv, "-device", "scsi-hd")[0]
    assert nic(pxe).endswith("bootindex=1") and disk(pxe).endswith("bootindex=2")
    assert nic(default).endswith("bootindex=2") and disk(default).endswith("bootindex=1")
    assert f"mac={vm.mac}" in nic(pxe) and f"id={lab_vms.NIC_ID}" in nic(pxe)
    assert f"id={lab_vms.DISK_ID}" in disk(pxe)
    with pytest.raises(ValueError):
        lab_vms.qemu_argv(plan, vm, tmp_path, "cdrom")


def test_qemu_argv_runs_tcg_in_the_bridge_namespace_on_the_vms_tap(tmp_path):
    plan = lab_plan.plan_lab(tmp_path, 1, slot=7, vms=2)
    argv = lab_vms.qemu_argv(plan, plan.vms[0], tmp_path, "default")
    assert argv[:3] == ["nsenter", f"--net=/run/netns/{plan.bridge_netns}", "--"]
    assert argv[3] == "qemu-system-x86_64"
    assert _arg_after(argv, "-accel") == ["tcg"]
    # The CPU model TCG runs fastest here, and a disk whose flushes stay in the host's cache.
    assert _arg_after(argv, "-cpu") == ["qemu64"]
    (disk,) = [d for d in _arg_after(argv, "-drive") if "id=hd0" in d]
    assert "cache=unsafe" in disk.split(",") and disk.endswith(f"file={tmp_path / 'disk.qcow2'}")
    assert _arg_after(argv, "-netdev") == [f"tap,id=net0,ifname={plan.vms[0].tap},script=no,downscript=no"]
    assert _arg_after(argv, "-name") == [f"guest={plan.vms[0].machine},process={plan.vms[0].machine}"]
    assert _arg_after(argv, "-pidfile") == [str(tmp_path / "qemu.pid")] and "-daemonize" in argv
    qmp = _arg_after(argv, "-qmp")[0]
    assert qmp.startswith(f"unix:{lab_vms.SOCKET_DIR}/") and len(qmp.split(",")[0]) - 5 < 108


def test_qemu_argv_firmware_bios_then_uefi_with_own_variables(tmp_path):
    plan = lab_plan.plan_lab(tmp_path, 1, slot=7, vms=2)
    bios = lab_vms.qemu_argv(plan, plan.vms[0], tmp_path / "vm01", "pxe")
    uefi = lab_vms.qemu_argv(plan, plan.vms[1], tmp_path / "vm02", "pxe")
    assert not _arg_after(bios, "-drive", "if=pflash")
    assert _arg_after(uefi, "-drive", "if=pflash") == [
        f"if=pflash,format=raw,unit=0,readonly=on,file={lab_vms.OVMF_CODE}",
        f"if=pflash,format=raw,unit=1,file={tmp_path / 'vm02' / 'OVMF_VARS.fd'}",
    ]


def test_vm_spec_names_both_command_lines_and_the_short_stop(tmp_path):
    plan = lab_plan.plan_lab(tmp_path, 1, slot=7, vms=1)
    spec = lab_vms.vm_spec(plan, plan.vms[0], tmp_path)
    assert set(spec["argv"]) == {"pxe", "default"}
    assert spec["pidfile"] == str(tmp_path / "qemu.pid") and spec["machine"] == plan.vms[0].machine
    assert spec["stop_timeout_s"] <= 5  # ipmitool stops waiting for the BMC's answer soon after
    assert spec["nice"] == 0 and lab_vms.vm_spec(plan, plan.vms[0], tmp_path, nice=-10)["nice"] == -10


@pytest.mark.parametrize("size,ok", [("8G", True), ("20480M", True), ("2T", True), ("3T", False),
                                     ("0G", False), ("8", False), ("8g", False), ("-1G", False), ("G", False)])
def test_disk_size(size, ok):
    assert lab_vms.valid_disk_size(size) is ok


@pytest.mark.parametrize("args,message", [
    (("--vms", "17"), "error: command line: --vms: must be between 0 and 16 (got 17)"),
    (("--vms", "1", "--vm-disk-size", "8gb"),
     "error: command line: --vm-disk-size: '8gb' is not a size like 8G or 20480M (1M to 2T)"),
    (("--vms", "1", "--vm-nice", "-21"), "error: command line: --vm-nice: must be a nice value between -20 and 19 (got -21)"),
    (("--vms", "1", "--vm-nice", "20"), "error: command line: --vm-nice: must be a nice value between -20 and 19 (got 20)"),
])
def test_cli_bad_vm_options_are_one_line_exit_2(tmp_path, args, message):
    res = podsys("lab", "up", "--nodes", "1", *args, "--dir", tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip() == message
    assert not (tmp_path / "lab.yaml").exists()
