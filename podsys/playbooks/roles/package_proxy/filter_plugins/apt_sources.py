"""Filters turning the head's apt configuration (as apt itself reports it) into what the package
service and the nodes need. Pure functions, importable without Ansible for unit tests."""

from __future__ import annotations

import re

PROXY_LINE = re.compile(r'^Acquire::http::Proxy\s+"([^"]*)";\s*$')


def package_proxy_sources(lines):
    """`apt-get indextargets --format '$(REPO_URI) $(RELEASE) $(COMPONENT)'` lines ->
    [{uri, suite, components}], one per repository and suite, in apt's order."""
    entries: dict[tuple[str, str], list[str]] = {}
    for line in lines or []:
        parts = str(line).split()
        if len(parts) < 2:
            continue
        uri, suite = parts[0].rstrip("/") + "/", parts[1]
        components = entries.setdefault((uri, suite), [])
        for component in parts[2:3]:
            if component not in components:
                components.append(component)
    return [{"uri": uri, "suite": suite, "components": comps} for (uri, suite), comps in entries.items()]


def package_proxy_mirror(sources):
    """The Debian archive among the sources: the first http(s) repository that is not the
    security archive. '' when there is none."""
    for src in sources or []:
        uri = src["uri"]
        if uri.startswith(("http://", "https://")) and "security" not in uri and "security" not in src["suite"]:
            return uri
    return ""


def package_proxy_apt_proxy(lines):
    """The head's own apt HTTP proxy from `apt-config dump Acquire::http::Proxy`; '' if none."""
    for line in lines or []:
        match = PROXY_LINE.match(str(line).strip())
        if match and match.group(1) and match.group(1).upper() != "DIRECT":
            return match.group(1)
    return ""


class FilterModule:
    def filters(self):
        return {
            "package_proxy_sources": package_proxy_sources,
            "package_proxy_mirror": package_proxy_mirror,
            "package_proxy_apt_proxy": package_proxy_apt_proxy,
        }
