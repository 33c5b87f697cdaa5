"""Prometheus file_sd entries from podsys node records."""

from __future__ import annotations


def monitoring_target(node, port):
    """One file_sd entry: the node's provision address and labels naming it."""
    return {
        "targets": [f"{node['ip']}:{int(port)}"],
        "labels": {
            "node": node["name"],
            "group": node.get("group") or "",
            "hardware": node.get("hardware") or "",
        },
    }


class FilterModule:
    def filters(self):
        return {"monitoring_target": monitoring_target}
