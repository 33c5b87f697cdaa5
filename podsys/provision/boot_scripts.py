"""Each node's iPXE script, made on request from the rendered node table.

Render writes one table (provision/nodes.json: the cluster's boot URLs once, then per node its
MAC, disk, install method, image and kernel command line) instead of two script files per node;
the status service on the head answers `GET /api/v1/boot/<mac>.ipxe` (nginx forwards the
boot tree's ipxe/nodes/ there) with the `install` or `local` script for the node's boot state,
as Warewulf's daemon answers from its node database. A MAC that is not in the table gets no
script. Stdlib only: it runs on the head with plain python3; the scripts are byte for byte
what the Jinja templates podsys rendered them from before (tests/unit/provision/test_boot_scripts.py
keeps those templates and checks it)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from string import Template


class _Script(Template):
    # iPXE's own ${var} settings appear in the scripts verbatim: '@' marks podsys's fields.
    delimiter = "@"


LOCAL = _Script("""\
#!ipxe
# podsys: @name (@mac) boot state "local": boot from the installed disk.
echo podsys: @name boots from its local disk
iseq ${platform} efi && exit ||
sanboot --no-describe --drive 0x80 || exit
""")

IMAGE = _Script("""\
#!ipxe
# podsys: @name (@mac) boot state "install": the deploy ramdisk writes image
# @image_name onto @disk (and no other disk); when it finishes the head switches
# this node to "local".
echo podsys: imaging @name (@disk) with @image_name
imgfetch --name callback @callback_url?event=stage&stage=pxe&message=ramdisk+booting || echo podsys: status service unreachable, continuing
imgfree callback ||
initrd --name initrd @ramdisk_url/initrd.img || goto failed
kernel @ramdisk_url/vmlinuz initrd=initrd @kernel_args || goto failed
boot || goto failed
:failed
echo podsys: cannot boot the deploy ramdisk; run `podsys image build` and deploy the head
imgfetch @callback_url?event=fail&stage=pxe&message=deploy+ramdisk+missing ||
sleep 60
reboot
""")

INSTALLER = _Script("""\
#!ipxe
# podsys: @name (@mac) boot state "install": boot the @os_key installer.
# The install wipes @disk; when it finishes the head switches this node to "local".
echo podsys: installing @os_key on @name (@disk)
imgfetch --name callback @callback_url?event=stage&stage=pxe&message=installer+booting || echo podsys: status service unreachable, continuing
imgfree callback ||
initrd --name initrd @media_url/initrd || goto failed
kernel @media_url/vmlinuz initrd=initrd @kernel_args || goto failed
boot || goto failed
:failed
echo podsys: cannot boot the @os_key installer; run `podsys provision media add` on the head
imgfetch @callback_url?event=fail&message=installer+media+missing ||
sleep 60
reboot
""")

METHODS = ("image", "installer")


def mac_key(mac: str) -> str:
    """aa:bb:.. or AA-BB-.. (iPXE's ${netX/mac:hexhyp}) -> aa-bb-..: one spelling to look up."""
    return mac.strip().lower().replace(":", "-")


@dataclass(frozen=True)
class BootTable:
    """The boot part of provision/nodes.json: cluster-wide URLs and each PXE node's entry."""

    shared: dict  # callback_url, ramdisk_url, media_url, os_key
    nodes: dict[str, dict]  # name -> {mac, disk, method, image, kernel_args, ...}
    by_mac: dict[str, str]  # mac_key -> name

    @classmethod
    def from_data(cls, data: dict) -> "BootTable":
        nodes = {name: entry for name, entry in data["nodes"].items() if entry.get("pxe", True)}
        return cls(shared=data.get("boot", {}), nodes=nodes,
                   by_mac={mac_key(entry["mac"]): name for name, entry in nodes.items()})

    def node_for_mac(self, mac: str) -> str | None:
        return self.by_mac.get(mac_key(mac))

    def script(self, name: str, boot: str) -> str:
        """The iPXE script node `name` gets in boot state `boot` (install or local)."""
        entry = self.nodes[name]
        fields = {**self.shared, "name": name, "mac": entry["mac"], "disk": entry.get("disk", "")}
        if boot == "local":
            return LOCAL.substitute(fields)
        if boot != "install":
            raise ValueError(f"unknown boot state {boot!r} (expected install or local)")
        if "kernel_args" not in entry:
            raise ValueError(f"{name}: the node table has no install entry (re-render with this podsys)")
        fields.update(kernel_args=entry["kernel_args"], image_name=entry.get("image") or "")
        template = IMAGE if entry.get("method") == "image" else INSTALLER
        return template.substitute(fields)


def load_boot_table(path: Path) -> BootTable:
    return BootTable.from_data(json.loads(Path(path).read_text()))
