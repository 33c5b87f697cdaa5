"""Network basics on the provision network: every host reaches every other, and every host's
provision interface has the same MTU (the manifest's, when it sets one)."""

from __future__ import annotations

import re
from collections import Counter
from ipaddress import IPv4Address, IPv4Network

from podsys.checks.findings import Finding, failed, passed
from podsys.checks.live import Context, Probe, Results, quote, split_sections


def reach_script(addresses: list[str], parallel: int = 32) -> str:
    # ping when installed (minimal images lack it); else a TCP connect to sshd, which every
    # podsys host runs; the method is printed so the report says which proof it has. Targets
    # are tried `parallel` at a time so a large cluster's mesh does not take minutes per host.
    one = (
        'if command -v ping >/dev/null 2>&1; then '
        '  if ping -n -c 2 -i 0.2 -W 2 -q "$1" >/dev/null 2>&1; then echo "$1 ok ping"; else echo "$1 fail ping"; fi; '
        'else '
        '  if timeout 3 bash -c "exec 3<>/dev/tcp/$1/22" 2>/dev/null; then echo "$1 ok tcp/22"; else echo "$1 fail tcp/22"; fi; '
        "fi"
    )
    targets = " ".join(quote(a) for a in addresses)
    loop = f"printf '%s\\n' {targets} | xargs -r -n 1 -P {parallel} sh -c {quote(one)} reach"
    return f"echo '### addr'; ip -o -4 addr show; echo '### link'; ip -o link show; echo '### reach'; {loop}"


def parse_reach(text: str) -> dict[str, tuple[bool, str]]:
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] in ("ok", "fail"):
            out[parts[0]] = (parts[1] == "ok", parts[2])
    return out


def provision_mtu(addr_text: str, link_text: str, cidr: IPv4Network) -> tuple[str | None, int | None]:
    """The interface holding an address in `cidr`, and its MTU."""
    iface = None
    for line in addr_text.splitlines():
        m = re.match(r"^\d+:\s+(\S+)\s+inet\s+([\d.]+)/\d+", line)
        if m and IPv4Address(m.group(2)) in cidr:
            iface = m.group(1)
            break
    if iface is None:
        return None, None
    for line in link_text.splitlines():
        m = re.match(r"^\d+:\s+([^:@\s]+)(?:@\S+)?:\s.*\bmtu (\d+)", line)
        if m and m.group(1) == iface:
            return iface, int(m.group(2))
    return iface, None


def judge_network(per_host: dict[str, dict[str, str]], addresses: dict[str, str], cidr: IPv4Network,
                  manifest_mtu: int | None) -> list[Finding]:
    """per_host: host -> its sections (addr, link, reach); addresses: host -> provision IP."""
    by_address = {ip: host for host, ip in addresses.items()}
    out: list[Finding] = []
    mtus: dict[str, int] = {}
    for host, sections in per_host.items():
        reach = parse_reach(sections.get("reach", ""))
        targets = [ip for h, ip in addresses.items() if h != host]
        unreachable = [by_address[ip] for ip in targets if not reach.get(ip, (False, ""))[0]]
        methods = sorted({m for ok, m in reach.values() if ok})
        if unreachable:
            out.append(failed(
                host, "network.reach", value=len(unreachable), detail=f"cannot reach {', '.join(unreachable)} on the provision network",
                diagnosis="no path between these hosts: check links/cabling, switch VLAN, the interfaces' addresses (ip addr) and firewalls",
            ))
        else:
            out.append(passed(host, "network.reach", value=len(targets), detail=f"reaches all {len(targets)} others ({', '.join(methods) or 'none'})"))
        iface, mtu = provision_mtu(sections.get("addr", ""), sections.get("link", ""), cidr)
        if mtu is None:
            out.append(failed(host, "network.mtu", detail=f"no interface with an address in {cidr}",
                              diagnosis="the host has no provision-network address: check its network configuration"))
        else:
            mtus[host] = mtu
    if mtus:
        expected = manifest_mtu or Counter(mtus.values()).most_common(1)[0][0]
        why = "manifest networks.provision.mtu" if manifest_mtu else "most hosts"
        for host, mtu in mtus.items():
            if mtu != expected:
                out.append(failed(host, "network.mtu", value=mtu, threshold=float(expected),
                                  detail=f"MTU {mtu}, expected {expected} ({why})",
                                  diagnosis="mismatched MTU drops large frames silently: set the same MTU on every host and the switch ports"))
            else:
                out.append(passed(host, "network.mtu", value=mtu, detail=f"MTU {mtu}"))
    return out


def _addresses(ctx: Context) -> dict[str, str]:
    head = ctx.cluster.manifest.head
    addresses = {ctx.head: str(head.address)}
    addresses.update({n.name: n.provision_ip for n in ctx.nodes})
    return addresses


def probes(ctx: Context) -> list[Probe]:
    addresses = _addresses(ctx)
    return [Probe(host=host, name="network", command=reach_script([ip for h, ip in addresses.items() if h != host]), timeout=300)
            for host in addresses]


def judge(ctx: Context, results: Results) -> list[Finding]:
    addresses = _addresses(ctx)
    per_host: dict[str, dict[str, str]] = {}
    out: list[Finding] = []
    for host in addresses:
        result = results.get((host, "network"))
        if result is None or not result.ran:
            out.append(failed(host, "network.reach", detail=result.problem() if result else "not collected",
                              diagnosis="podsys cannot reach this host over SSH: check it is up and its access settings"))
            continue
        per_host[host] = split_sections(result.stdout)
    net = ctx.cluster.manifest.networks.provision
    return out + judge_network(per_host, {h: a for h, a in addresses.items()}, net.cidr, net.mtu)
