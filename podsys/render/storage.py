"""The storage layer's files, rendered in Python (pure): systemd mount units for client mounts
and the head's nfs-ganesha configuration. The storage role only lays them down.

Mount unit names follow systemd's path escaping (the unit must be named after Where=, or
systemd refuses it). Sources for each kind:
- nfs: nfs(5), `mount -t nfs SERVER:/EXPORT DIR`.
- lustre: `mount -t lustre MGSNID[:MGSNID]:/FSNAME DIR`, https://wiki.lustre.org/Mounting_a_Lustre_File_System_on_Client_Nodes
- beegfs: `mount -t beegfs beegfs_nodev DIR -o cfgFile=/etc/beegfs/beegfs-client.conf`; the
  management host goes into that file's sysMgmtdHost (BeeGFS client documentation,
  https://doc.beegfs.io/latest/advanced_topics/client_configuration.html).
- gpfs: `mount -t gpfs DEVICE DIR` for a file system the GPFS cluster already knows (IBM
  Storage Scale: mmmount / fstab entries of type gpfs).
- nfs-ganesha EXPORT blocks: ganesha-export-config(8) from nfs-ganesha/nfs-ganesha
  (src/doc/man/ganesha-export-config.rst)."""

from __future__ import annotations

from podsys.cluster.model import Cluster

FS_TYPES = {"nfs": "nfs", "lustre": "lustre", "beegfs": "beegfs", "gpfs": "gpfs"}
DEFAULT_OPTIONS = {"nfs": ["_netdev", "hard"], "lustre": ["_netdev", "flock"],
                   "beegfs": ["_netdev", "cfgFile=/etc/beegfs/beegfs-client.conf"], "gpfs": ["_netdev"]}
SQUASH = {"root_squash": "Root_Squash", "no_root_squash": "No_Root_Squash", "all_squash": "All_Squash"}


def escape_path(path: str) -> str:
    """systemd-escape --path: '/' separators become '-', anything but [A-Za-z0-9:_.] (and a
    leading '.') becomes \\xNN. Source: systemd.unit(5), "String Escaping for Inclusion in Unit Names"."""
    trimmed = path.strip("/")
    if not trimmed:
        return "-"
    out = []
    for i, char in enumerate(trimmed):
        if char == "/":
            out.append("-")
        elif char.isascii() and (char.isalnum() or char in ":_") or (char == "." and i > 0):
            out.append(char)
        else:
            out.extend(f"\\x{byte:02x}" for byte in char.encode())
    return "".join(out)


def mount_unit_name(path: str) -> str:
    return escape_path(path) + ".mount"


def mount_unit(kind: str, source: str, path: str, options: list[str]) -> str:
    what = "beegfs_nodev" if kind == "beegfs" else source
    merged = list(dict.fromkeys(DEFAULT_OPTIONS[kind] + options))
    return (
        "# Written by podsys (storage layer).\n"
        "[Unit]\n"
        f"Description=podsys shared storage {path} ({kind})\n"
        "After=network-online.target\n"
        "Wants=network-online.target\n\n"
        "[Mount]\n"
        f"What={what}\n"
        f"Where={path}\n"
        f"Type={FS_TYPES[kind]}\n"
        f"Options={','.join(merged)}\n\n"
        "[Install]\n"
        "WantedBy=remote-fs.target\n"
    )


def storage_mounts(cluster: Cluster) -> list[dict]:
    """Every client mount as {name, content, node_groups, kind, path}; `lab-bind` mounts (the
    lab binds them itself) get no unit."""
    out = []
    for mount in cluster.manifest.storage.mounts:
        if mount.kind == "lab-bind":
            continue
        out.append({
            "kind": mount.kind,
            "path": mount.path,
            "name": mount_unit_name(mount.path),
            "node_groups": mount.node_groups,
            "content": mount_unit(mount.kind, mount.source or "", mount.path, list(mount.options)),
        })
    return out


def ganesha_conf(cluster: Cluster) -> str:
    """nfs-ganesha's configuration: one VFS export per `storage.exports` entry, NFSv3 and v4
    (v3 for user-space clients such as libnfs), clients limited to the given network. The VFS
    FSAL serves files by handle: the exported directory must be on a file system with file
    handles (ext4, xfs, btrfs; not overlayfs)."""
    m = cluster.manifest
    lines = ["# Written by podsys (storage layer). ganesha-config(8), ganesha-export-config(8).",
             "NFS_CORE_PARAM {", "    Protocols = 3, 4;", "}", ""]
    for index, export in enumerate(m.storage.exports, start=1):
        clients = str(export.clients or m.networks.provision.cidr)
        lines += [
            "EXPORT {",
            f"    Export_Id = {index};",
            f'    Path = "{export.path}";',
            f'    Pseudo = "{export.path}";',
            "    Protocols = 3, 4;",
            "    Access_Type = None;",
            f"    Squash = {SQUASH[export.squash]};",
            "    SecType = sys;",
            "    FSAL { Name = VFS; }",
            "    CLIENT {",
            f"        Clients = {clients};",  # a bare list: ganesha refuses a quoted client
            f"        Access_Type = {export.access.upper()};",
            "    }",
            "}",
            "",
        ]
    return "\n".join(lines)


def storage_vars(cluster: Cluster) -> dict:
    return {"podsys_storage_mounts": storage_mounts(cluster), "podsys_storage_ganesha_conf": ganesha_conf(cluster)}
