"""Render the head's boot services and every node's unattended installer configuration.

`render_files(cluster)` is pure and deterministic: the same cluster gives the same bytes. Its
output lands under `provision/` in the build directory; the `provision` Ansible role copies it
onto the head (dnsmasq, nginx, the boot tree) and the status service there answers each node's
iPXE script from the node table (provision/nodes.json) and the node's boot state.

Boot tree layout (served by nginx at http://HEAD[:PORT]/boot/):
  ipxe/boot.ipxe                entry script every iPXE client gets from DHCP
  ipxe/nodes/<mac>.ipxe         not a file: nginx forwards it to the status service, which
                                answers the install or local script for the node's boot state
                                (podsys.provision.boot_scripts) and 404 for an unknown MAC
  nodes/<name>/...              installer config (user-data + meta-data | ks.cfg | preseed.cfg)
  media/<os>/vmlinuz, initrd    installer kernel and initrd (`podsys provision media add`)
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from urllib.parse import urlsplit

import jinja2

from podsys.cluster.model import Cluster, NodeSpec
from podsys.layout import HEAD_PATHS, PACKAGE_CACHE_PORT, HeadPaths
from podsys.provision import boot_scripts, image_boot
from podsys.provision.image import cluster_images

DEBIAN_SUITES = {"12": "bookworm"}
CONSOLE_ARGS = "console=tty0 console=ttyS0,115200n8"


@dataclass(frozen=True)
class BootFiles:
    """First-stage iPXE binaries in the TFTP root (Debian's `ipxe` package ships the x86 ones)."""

    bios: str = "undionly.kpxe"
    efi_x86_64: str = "snponly.efi"
    efi_arm64: str = "ipxe-arm64.efi"


DEFAULT_BOOT_FILES = BootFiles()


@dataclass(frozen=True)
class NodeView:
    """What the templates need to know about one node."""

    name: str
    fqdn: str
    mac: str
    mac_file: str  # aa-bb-cc-dd-ee-ff: how iPXE's ${netX/mac:hexhyp} spells it
    ip: str
    prefix: int
    netmask: str
    gateway: str | None
    dns: tuple[str, ...]
    mtu: int | None
    disk: str
    disk_short: str  # sda, nvme0n1, disk/by-id/...: anaconda wants no /dev/
    pxe: bool
    config_url: str
    callback_url: str


@dataclass(frozen=True)
class Urls:
    base: str  # http://HEAD[:PORT]
    boot: str
    repo: str
    callback: str
    webhook: str
    status: str  # the status service's API root


# packages.source: online -> installers fetch from the distribution's own mirror.
PUBLIC_MIRRORS = {
    "debian": "http://deb.debian.org/debian",
    "ubuntu": "http://archive.ubuntu.com/ubuntu",
    "rocky": "http://dl.rockylinux.org/pub/rocky",
}
# packages.source: proxy -> nginx hands /repo/ to the head's package cache (the package_proxy
# role's apt-cacher-ng, which listens on the head's provision address on PACKAGE_CACHE_PORT).


def urls_for(cluster: Cluster) -> Urls:
    m = cluster.manifest
    port = m.provisioning.http_port
    base = f"http://{m.head.address}" + ("" if port == 80 else f":{port}")
    status = f"http://{m.head.address}:{m.provisioning.status_port}/api/v1"
    if m.packages.source == "online":
        repo = (m.packages.upstream or PUBLIC_MIRRORS[m.os.distro]).rstrip("/")
    elif m.packages.source == "bundle":
        repo = f"{base}/repo"  # nginx hands /repo/ to the bundle's own repository
    else:
        repo = f"{base}/repo/{m.os.distro}"
    return Urls(base=base, boot=f"{base}/boot", repo=repo, callback=f"{status}/callback", webhook=f"{status}/webhook",
                status=status)


def _repo_backend(cluster: Cluster) -> str | None:
    """The head service nginx's /repo/ forwards to: the package cache (proxy) or the bundle's
    repository (bundle, served by the package_proxy role on its own port); None = a plain
    directory (online)."""
    m = cluster.manifest
    if m.packages.source == "proxy":
        return f"http://{m.head.address}:{PACKAGE_CACHE_PORT}"
    if m.packages.source == "bundle":
        return f"http://{m.head.address}:{m.packages.bundle_port}/repo"
    return None


def mac_filename(mac: str) -> str:
    return mac.lower().replace(":", "-")


def boot_nodes(cluster: Cluster) -> list[NodeSpec]:
    """Nodes the head answers DHCP for: every node with a MAC (PXE or not)."""
    return [n for n in cluster.nodes if n.mac]


def _dns_servers(cluster: Cluster) -> tuple[str, ...]:
    m = cluster.manifest
    servers = [str(a) for a in m.networks.provision.dns]
    if m.provisioning.dns and str(m.head.address) not in servers:
        servers.insert(0, str(m.head.address))
    return tuple(servers)


def _network_fields(cluster: Cluster) -> dict:
    """What every node's view shares: the provision network's settings, as strings."""
    net = cluster.manifest.networks.provision
    return {"prefix": net.cidr.prefixlen, "netmask": str(net.cidr.netmask),
            "gateway": str(net.gateway) if net.gateway else None, "dns": _dns_servers(cluster), "mtu": net.mtu}


def node_view(cluster: Cluster, node: NodeSpec, urls: Urls, network: dict | None = None) -> NodeView:
    """`network`: _network_fields(cluster), computed once by a caller with thousands of nodes."""
    disk = node.disk
    return NodeView(
        name=node.name,
        fqdn=node.fqdn,
        mac=node.mac or "",
        mac_file=mac_filename(node.mac or ""),
        ip=node.provision_ip,
        **(network or _network_fields(cluster)),
        disk=disk,
        disk_short=disk[len("/dev/"):] if disk.startswith("/dev/") else disk,
        pxe=node.pxe,
        config_url=f"{urls.boot}/nodes/{node.name}/",
        callback_url=urls.callback,
    )


@lru_cache(maxsize=1)
def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("podsys", "templates/provision"),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    # A JSON string/list is a YAML flow scalar/sequence: quoting that no value can break out
    # of, without Jinja's tojson HTML escapes (\u0027 for ') that would puzzle a reader.
    env.filters["yaml_quote"] = lambda value: json.dumps(value, ensure_ascii=False)
    return env


def _render(template: str, **context) -> str:
    return _env().get_template(template).render(**context)


def root_authorized_keys(cluster: Cluster) -> list[str]:
    """provisioning.root_authorized_keys plus the public half of access.private_key_file
    (<key>.pub next to it) when that file exists: the key podsys itself logs in with.
    Validation (podsys/cluster/checks.py, "provisioning") has checked every one of them."""
    m = cluster.manifest
    keys = [k.strip() for k in m.provisioning.root_authorized_keys if k.strip()]
    pub = cluster.access.public_key_file
    if pub is not None:
        if pub.is_file():
            text = pub.read_text().strip()
            if text not in keys:
                keys.append(text)
    return keys


def _ubuntu_user_data(cluster: Cluster, node: NodeView, keys: list[str], pw_hash: str | None, urls: Urls) -> str:
    def callback(query: str) -> str:
        return f"curl -fsS -m 10 -o /dev/null '{node.callback_url}?{query}' || true"

    late = [callback("event=stage&stage=configuring"), "mkdir -p -m 0700 /target/root/.ssh"]
    if keys:
        keys_b64 = base64.b64encode(("\n".join(keys) + "\n").encode()).decode()
        late.append(f"echo '{keys_b64}' | base64 -d > /target/root/.ssh/authorized_keys")
        late.append("chmod 0600 /target/root/.ssh/authorized_keys")
    if pw_hash:
        late.append(f"curtin in-target --target=/target -- usermod -p '{pw_hash}' root")
    late.append(f"echo '{node.name}' > /target/etc/hostname")
    late.append(callback("event=finish"))
    return _render("ubuntu-user-data.yaml.j2", cluster_name=cluster.name, node=node, callback=callback,
                   late_commands=late, repo_url=urls.repo, webhook_url=urls.webhook,
                   domain=cluster.manifest.metadata.domain)


def _meta_data(node: NodeView) -> str:
    return f"instance-id: podsys-{node.name}\nlocal-hostname: {node.name}\n"


def _kernel_args(cluster: Cluster, node: NodeView, urls: Urls) -> str:
    os_spec = cluster.manifest.os
    if os_spec.distro == "ubuntu":
        # casper fetches the live ISO into RAM; the installer then reads our NoCloud seed.
        return (f"ip=dhcp url={urls.boot}/media/{os_spec.key}/ubuntu.iso autoinstall "
                f"ds=nocloud-net;s={node.config_url} cloud-config-url=/dev/null {CONSOLE_ARGS}")
    if os_spec.distro == "rocky":
        return (f"ip=dhcp inst.stage2={urls.boot}/media/{os_spec.key}/ inst.ks={node.config_url}ks.cfg "
                f"inst.text {CONSOLE_ARGS}")
    # debian-installer reads the preseed over a network it configures statically from these.
    gateway = node.gateway or ""
    return (f"auto=true priority=critical url={node.config_url}preseed.cfg "
            f"netcfg/choose_interface={node.mac} netcfg/disable_autoconfig=true "
            f"netcfg/get_ipaddress={node.ip} netcfg/get_netmask={node.netmask} "
            f"netcfg/get_gateway={gateway} netcfg/get_nameservers={','.join(node.dns)} "
            f"netcfg/confirm_static=true hostname={node.name} domain={cluster.manifest.metadata.domain} "
            f"{CONSOLE_ARGS}")


def _repo_parts(cluster: Cluster, urls: Urls) -> dict:
    os_spec = cluster.manifest.os
    if os_spec.distro == "rocky":
        major = os_spec.version.split(".")[0]
        return {"baseos": f"{urls.repo}/{major}/BaseOS/x86_64/os/",
                "appstream": f"{urls.repo}/{major}/AppStream/x86_64/os/"}
    parts = urlsplit(urls.repo)
    return {"host": parts.netloc, "directory": parts.path or "/"}


def installer_files(cluster: Cluster, node: NodeView, urls: Urls, keys: list[str], pw_hash: str | None) -> dict[str, str]:
    """Relative path (under the boot tree) -> content, for one node's installer config."""
    os_spec = cluster.manifest.os
    base = f"nodes/{node.name}"
    ctx = dict(cluster_name=cluster.name, node=node, os_key=os_spec.key, root_keys=keys,
               root_password_hash=pw_hash, repo=_repo_parts(cluster, urls), domain=cluster.manifest.metadata.domain)
    if os_spec.distro == "ubuntu":
        return {f"{base}/user-data": _ubuntu_user_data(cluster, node, keys, pw_hash, urls),
                f"{base}/meta-data": _meta_data(node),
                f"{base}/vendor-data": ""}
    if os_spec.distro == "rocky":
        return {f"{base}/ks.cfg": _render("kickstart.cfg.j2", **ctx)}
    keys_b64 = base64.b64encode(("\n".join(keys) + "\n").encode()).decode() if keys else ""
    return {f"{base}/preseed.cfg": _render("preseed.cfg.j2", suite=DEBIAN_SUITES[os_spec.version],
                                           root_keys_b64=keys_b64, **ctx)}


def status_nodes(cluster: Cluster) -> dict[str, dict]:
    """The node list the status service and state.py work from (no manifest parsing on the head)."""
    return {n.name: {"ip": n.provision_ip, "mac": n.mac, "pxe": n.pxe} for n in boot_nodes(cluster)}


def boot_shared(cluster: Cluster, urls: Urls, with_ramdisk: bool) -> dict[str, str]:
    """The cluster-wide fields of every node's iPXE script (podsys.provision.boot_scripts)."""
    return {"callback_url": urls.callback, "os_key": cluster.manifest.os.key,
            "media_url": f"{urls.boot}/media/{cluster.manifest.os.key}",
            "ramdisk_url": image_boot.ramdisk_url(urls.boot) if with_ramdisk else ""}


def node_table_text(cluster: Cluster, urls: Urls, views: list[NodeView], boot_entries: dict[str, dict],
                    with_ramdisk: bool) -> str:
    """provision/nodes.json: what the status service and state.py work from on the head (no
    manifest parsing there) and what the service makes each node's iPXE script from. One line
    per node: at thousands of nodes an indented dump would be most of the render's time."""
    m = cluster.manifest
    head = {"boot": boot_shared(cluster, urls, with_ramdisk), "cluster": cluster.name,
            "default_boot_state": m.provisioning.default_boot_state}
    encode = json.JSONEncoder(sort_keys=True).encode  # one encoder: json.dumps builds one per call
    lines = [f"  {encode(v.name)}: " + encode({"ip": v.ip, "mac": v.mac, "pxe": True, "disk": v.disk, **boot_entries[v.name]})
             for v in views if v.pxe]
    head_text = json.dumps(head, indent=1, sort_keys=True)[:-2]  # reopen the object for "nodes"
    return head_text + ',\n "nodes": {\n' + ",\n".join(lines) + ("\n" if lines else "") + " }\n}\n"


def boot_script(files: dict[str, str], mac: str, boot: str) -> str | None:
    """The iPXE script the head serves to MAC in boot state `boot`, from render's output (what
    the status service answers; None where it answers 404)."""
    table = boot_scripts.BootTable.from_data(json.loads(files["provision/nodes.json"]))
    name = table.node_for_mac(mac)
    return None if name is None else table.script(name, boot)


SERVICE_MODULES = ("boot_scripts.py", "state.py", "status.py")


def service_files() -> dict[str, str]:
    """The status service's code (stdlib only) as a tiny `podsys` package the role copies to
    the head, so the head needs nothing but python3 to run it."""
    package = resources.files("podsys.provision")
    files = {
        "provision/service/podsys/__init__.py": '"""podsys runtime on the head: the install status service only."""\n',
        "provision/service/podsys/provision/__init__.py": package.joinpath("__init__.py").read_text(),
    }
    for module in SERVICE_MODULES:
        files[f"provision/service/podsys/provision/{module}"] = package.joinpath(module).read_text()
    return files


def render_files(cluster: Cluster, paths: HeadPaths = HEAD_PATHS,
                 boot_files: BootFiles = DEFAULT_BOOT_FILES) -> dict[str, str]:
    """Everything the head's boot services need, as {path under the build dir: content}."""
    m = cluster.manifest
    urls = urls_for(cluster)
    keys = root_authorized_keys(cluster)
    pw_hash = m.provisioning.root_password_hash
    net = m.networks.provision
    network = _network_fields(cluster)
    views = [node_view(cluster, n, urls, network) for n in boot_nodes(cluster)]
    discovery = None
    if m.provisioning.discovery.enabled:
        d = m.provisioning.discovery
        discovery = {"start": str(d.range_start), "end": str(d.range_end)}
    port = m.provisioning.http_port
    images = cluster_images(cluster)
    image_of = image_boot.image_nodes(images)  # provisioning.method: image -> the deploy ramdisk
    files: dict[str, str] = {}
    files["provision/dnsmasq.conf"] = _render(
        "dnsmasq.conf.j2", cluster_name=cluster.name, dns=m.provisioning.dns, domain=m.metadata.domain,
        upstream_dns=[s for s in _dns_servers(cluster) if s != str(m.head.address)],
        interface=m.head.interface, paths=paths, network=str(net.cidr.network_address),
        netmask=str(net.cidr.netmask), discovery=discovery,
        gateway=str(net.gateway) if net.gateway else None, dns_servers=list(_dns_servers(cluster)),
        mtu=net.mtu, nodes=views, boot_files=boot_files, ipxe_entry_url=f"{urls.boot}/ipxe/boot.ipxe",
        dns_hosts=[{"fqdn": f"{m.head.hostname}.{m.metadata.domain}", "name": m.head.hostname, "ip": str(m.head.address)}]
        + [{"fqdn": n.fqdn, "name": n.name, "ip": n.provision_ip} for n in cluster.nodes],
    )
    files["provision/nginx-site.conf"] = _render(
        "nginx-site.conf.j2", cluster_name=cluster.name, listen=f"{m.head.address}:{port}",
        cidr=str(net.cidr), paths=paths,
        repo_proxy=_repo_backend(cluster),
        boot_scripts_backend=f"{urls.status}/boot",
        # image nodes have no installer config: no location of their own
        installer_nodes=[{"name": v.name, "ip": v.ip} for v in views if v.pxe and v.name not in image_of],
    )
    files["provision/boot/ipxe/boot.ipxe"] = _render("boot.ipxe.j2", cluster_name=cluster.name, boot_url=urls.boot)
    if image_of:
        files[f"provision/boot/{image_boot.KEYS_FILE}"] = image_boot.keys_file(keys)
    boot_entries: dict[str, dict] = {}
    for view in views:
        if not view.pxe:
            continue
        if view.name in image_of:
            key, name = image_of[view.name]
            boot_entries[view.name] = {"method": "image", "image": name,
                                       "kernel_args": image_boot.ramdisk_args(cluster, view, key, urls.boot)}
            continue
        boot_entries[view.name] = {"method": "installer", "image": None,
                                   "kernel_args": _kernel_args(cluster, view, urls)}
        for rel, content in installer_files(cluster, view, urls, keys, pw_hash).items():
            files[f"provision/boot/{rel}"] = content
    files.update(service_files())
    files[image_boot.SERVED_FILE] = json.dumps(image_boot.served_images(images), indent=2) + "\n"
    files["provision/nodes.json"] = node_table_text(cluster, urls, views, boot_entries, bool(image_of))
    return files

