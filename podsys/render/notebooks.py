"""Inventory variables for the web front door (`podsys_web`, the web_tls role) and the
`notebooks` layer (`podsys_notebooks`, the notebooks role). Pure.

The site certificate, key and batchspawner wheelhouse stay files next to the manifest (the
wheelhouse, when absent there, the offline bundle's: podsys/bundle/addon_wheels.py): render
hands the roles their absolute paths and Ansible copies them from the controller, so no key
lands in a rendered file. Password hashes stay in the secrets file
(`podsys_secrets.user_password_hashes`, podsys/render/build.py)."""

from __future__ import annotations

from ipaddress import IPv4Address

from podsys.bundle.addon_wheels import wheel_sets, wheelhouse_for
from podsys.cluster.model import Cluster
from podsys.layout import JUPYTERHUB_API_PORT, JUPYTERHUB_PROXY_API_PORT, JUPYTERHUB_PROXY_PORT, NOTEBOOKS_HTTPS_PORT

WEB_LAYERS = ("notebooks", "models")


def web_names(cluster: Cluster) -> list[str]:
    """Every name and address a browser may reach the head's web layers by: its hostname (and
    FQDN), provision address, SSH address and the manifest's web.names; first seen first."""
    m = cluster.manifest
    names = [m.head.hostname]
    if m.metadata.domain:
        names.append(f"{m.head.hostname}.{m.metadata.domain}")
    names += [str(m.head.address)] + ([str(m.head.ssh_address)] if m.head.ssh_address else []) + list(m.web.names)
    return list(dict.fromkeys(names))


def _is_address(name: str) -> bool:
    try:
        IPv4Address(name)
    except ValueError:
        return False
    return True


def web_vars(cluster: Cluster) -> dict:
    """What web_tls needs: the manifest's certificate and key (absolute controller paths), or
    none (the head makes a self-signed one for its hostname, with every web name as a SAN)."""
    m = cluster.manifest
    web = m.web
    return {
        "tls_certificate_file": str(cluster.base_dir / web.tls_certificate_file) if web.tls_certificate_file else None,
        "tls_key_file": str(cluster.base_dir / web.tls_key_file) if web.tls_key_file else None,
        "hostname": m.head.hostname,
        "address": str(m.head.address),
        "alt_names": [("IP:" if _is_address(n) else "DNS:") + n for n in web_names(cluster)],
    }


def default_partition(cluster: Cluster) -> str | None:
    partitions = cluster.manifest.slurm.partitions
    chosen = next((p for p in partitions if p.default), partitions[0] if partitions else None)
    return chosen.name if chosen else None


def notebooks_vars(cluster: Cluster) -> dict:
    """The hub's settings: who may log in (users with a password hash), where their notebooks
    live (storage.home/<user>), the spawn form's choices and defaults, and the ports."""
    m = cluster.manifest
    nb = m.notebooks
    (batchspawner,) = wheel_sets(["notebooks"])
    return {
        "users": sorted(u.name for u in m.users if u.password_hash),
        "home_parent": m.storage.home,
        "partitions": [p.name for p in m.slurm.partitions],
        "partition": nb.partition or default_partition(cluster),
        "cpus": nb.cpus,
        "gpus": nb.gpus,
        "time": nb.time,
        "wheelhouse": str(wheelhouse_for(m, cluster.base_dir, batchspawner)),
        "hub_address": str(m.head.address),
        "hub_hostname": m.head.hostname,
        "hub_api_port": JUPYTERHUB_API_PORT,
        "proxy_port": JUPYTERHUB_PROXY_PORT,
        "proxy_api_port": JUPYTERHUB_PROXY_API_PORT,
        "https_port": NOTEBOOKS_HTTPS_PORT,
    }


def web_layer_vars(cluster: Cluster) -> dict:
    """group_vars/all entries for the web layers the manifest enables (none otherwise)."""
    m = cluster.manifest
    out: dict = {}
    if any(layer in m.layers for layer in WEB_LAYERS):
        out["podsys_web"] = web_vars(cluster)
    if "notebooks" in m.layers:
        out["podsys_notebooks"] = notebooks_vars(cluster)
    return out
