"""A signed apt repository of dummy packages that looks like NVIDIA's (and DOCA's) for one stack
on Debian 12: the names and versions the stack's plan asks for, the dependency relations
between them, systemd units for the daemons the roles start, and a newer driver next to the
pinned one (which the pins must keep apt from taking).

Dependency relations follow NVIDIA's debian12 repository: the driver meta package requires its
libraries and kernel module package at exactly its own version (nvidia-driver Depends
libcuda1 (= V), nvidia-kernel-open-dkms (= V) | nvidia-kernel-dkms (= V)); -dev packages
require their library at the same version (libnccl-dev -> libnccl2, libcudnn9-dev-cuda-N ->
libcudnn9-cuda-N); DCGM 4's CUDA and proprietary packages require -core at their version.
Nothing is built or loaded: the packages are empty apart from the unit files."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

from podsys.cluster.hardware import builtin_profiles
from podsys.cluster.matrix import Stack
from podsys.cluster.stack_packages import node_plan

OS_KEY = "debian-12"
SUITE = "bookworm"
# A newer release of the same branch, published next to the pinned one.
NEWER_DRIVER = {"R570": "570.195.03", "R580": "580.105.08"}
UNITS = {
    "nvidia-persistenced": "nvidia-persistenced.service",
    "nvidia-fabricmanager": "nvidia-fabricmanager.service",
    "datacenter-gpu-manager-4-core": "nvidia-dcgm.service",
}


def deb_version(spec: str) -> str:
    """name=ver-* -> ver-1 (NVIDIA's debian12 revisions are -1); exact specs keep their version."""
    if "=" not in spec:
        return "1.0-1"
    version = spec.split("=", 1)[1]
    return version[:-1] + "1" if version.endswith("-*") else version


def _depends(name: str, version: str, plan_names: set[str]) -> str:
    if name == "nvidia-driver":
        kmods = [k for k in ("nvidia-kernel-open-dkms", "nvidia-kernel-dkms") if k in plan_names] or ["nvidia-kernel-open-dkms"]
        return f"libcuda1 (= {version}), " + " | ".join(f"{k} (= {version})" for k in kmods)
    if name == "libnccl-dev":
        return f"libnccl2 (= {version})"
    if name.startswith("libcudnn") and "-dev-" in name:
        return f"{name.replace('-dev-', '-')} (= {version})"
    if name.startswith("datacenter-gpu-manager-4-") and name != "datacenter-gpu-manager-4-core":
        return f"datacenter-gpu-manager-4-core (= {version})"
    return ""


def _replaces(name: str) -> str:
    """From R580 fabric manager and NSCQ drop the branch from their names (gpu-driver-container
    commit dc7857e); the branchless package takes over the branch-named one's files (NVIDIA's
    fabric manager RPM spec: Provides nvidia-fabricmanager-<branch>, Obsoletes the older names),
    which apt spells Conflicts + Replaces."""
    if name in ("nvidia-fabricmanager", "libnvidia-nscq"):
        return ", ".join(f"{name}-{branch}" for branch in ("535", "550", "570"))
    return ""


# A real kernel module's DKMS source: the smallest module that builds against a kernel's headers.
DKMS_MODULE = "podsys_dummy_nvidia"
DKMS_SOURCE = {
    "Makefile": f"obj-m := {DKMS_MODULE}.o\n",
    f"{DKMS_MODULE}.c": ('#include <linux/init.h>\n#include <linux/module.h>\n'
                         'MODULE_LICENSE("GPL");\nMODULE_DESCRIPTION("podsys dummy NVIDIA kernel module (tests)");\n'
                         "static int __init dummy_init(void) { return 0; }\nstatic void __exit dummy_exit(void) { }\n"
                         "module_init(dummy_init);\nmodule_exit(dummy_exit);\n"),
}


def _dkms_conf(version: str) -> str:
    """dkms.conf(5) for DKMS_SOURCE as /usr/src/nvidia-<version>: module nvidia, that version."""
    build = "${dkms_tree}/${PACKAGE_NAME}/${PACKAGE_VERSION}/build"
    return (f'PACKAGE_NAME="nvidia"\nPACKAGE_VERSION="{version}"\nBUILT_MODULE_NAME[0]="{DKMS_MODULE}"\n'
            'DEST_MODULE_LOCATION[0]="/updates/dkms"\n'
            f'MAKE[0]="make -C ${{kernel_source_dir}} M={build} modules"\n'
            f'CLEAN="make -C ${{kernel_source_dir}} M={build} clean"\nAUTOINSTALL="yes"\n')


def build_deb(work: Path, name: str, version: str, depends: str = "", dkms_source: bool = False) -> Path:
    """dkms_source: the package carries DKMS_SOURCE and adds it to DKMS in its postinst (as
    dh_dkms's postinst does), depending on dkms; only the image build test builds it."""
    root = work / "src" / f"{name}_{version}".replace(":", "_")
    (root / "DEBIAN").mkdir(parents=True, exist_ok=True)
    replaces = _replaces(name)
    if dkms_source:
        upstream = version.rsplit("-", 1)[0]
        src = root / "usr/src" / f"nvidia-{upstream}"
        src.mkdir(parents=True, exist_ok=True)
        for file, text in {**DKMS_SOURCE, "dkms.conf": _dkms_conf(upstream)}.items():
            (src / file).write_text(text)
        depends = ", ".join(d for d in (depends, "dkms") if d)
        postinst = root / "DEBIAN/postinst"
        postinst.write_text(f"#!/bin/sh\nset -e\nif [ \"$1\" = configure ]; then\n\tdkms add -m nvidia -v {upstream}\nfi\n")
        postinst.chmod(0o755)
    control = (f"Package: {name}\nVersion: {version}\nArchitecture: amd64\nMaintainer: podsys tests <tests@podsys.invalid>\n"
               + (f"Depends: {depends}\n" if depends else "")
               + (f"Conflicts: {replaces}\nReplaces: {replaces}\n" if replaces else "")
               + f"Description: dummy {name} (podsys dummy NVIDIA repository)\n")
    (root / "DEBIAN/control").write_text(control)
    unit_name = next((unit for prefix, unit in UNITS.items() if name == prefix or name.startswith(prefix + "-")
                      and prefix == "nvidia-fabricmanager"), None)  # nvidia-fabricmanager-570 ships the same unit
    if unit_name:
        unit = root / "lib/systemd/system" / unit_name
        unit.parent.mkdir(parents=True, exist_ok=True)
        unit.write_text(f"[Unit]\nDescription=dummy {unit_name}\n\n[Service]\nType=oneshot\nRemainAfterExit=yes\n"
                        "ExecStart=/bin/true\n\n[Install]\nWantedBy=multi-user.target\n")
        # What debhelper's dh_installsystemd puts in a real package's postinst.
        postinst = root / "DEBIAN/postinst"
        postinst.write_text("#!/bin/sh\nset -e\nif [ -d /run/systemd/system ]; then\n"
                            "\tsystemctl --system daemon-reload >/dev/null || true\nfi\n")
        postinst.chmod(0o755)
    out = work / "repo/pool/main" / f"{name}_{version.replace(':', '%3a')}_amd64.deb"
    out.parent.mkdir(parents=True, exist_ok=True)
    if not out.exists():
        subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "-b", str(root), str(out)], check=True, capture_output=True)
    return out


def planned(stack: Stack, profile_id: str, kernel: str) -> list:
    """The GPU and InfiniBand plan of one node (what the dummy repository must hold)."""
    options = {"layers": ["gpu", "infiniband"], "kernel": kernel}
    return node_plan(stack, OS_KEY, builtin_profiles()[profile_id], options).packages


def build(work: Path, stack: Stack, profile_id: str = "hgx-h100-8gpu", kernel: str | None = None,
          dkms_source: bool = False) -> dict[str, str]:
    """Build and sign the repository in work/repo; returns {package: planned Debian version}.
    dkms_source: the pinned nvidia-kernel-open-dkms carries a real DKMS module source."""
    from podsys.bundle.repo import SiteKey, build_repository

    kernel = kernel or platform.release()
    plan = [p for p in planned(stack, profile_id, kernel) if p.origin in ("vendor", "distribution") and p.component != "nccl_tests"]
    names = {p.name for p in plan}
    versions = {}
    for pkg in plan:
        version = deb_version(pkg.spec) if "=" in pkg.spec else (f"{pkg.version}-1" if pkg.version else "1.0-1")
        versions[pkg.name] = version
        build_deb(work, pkg.name, version, _depends(pkg.name, version, names),
                  dkms_source=dkms_source and pkg.name == "nvidia-kernel-open-dkms")
    versions["libcuda1"] = f"{stack.driver}-1"
    build_deb(work, "libcuda1", versions["libcuda1"])
    newer = f"{NEWER_DRIVER[stack.branch]}-1"
    for name in ("nvidia-driver", "libcuda1", "nvidia-kernel-open-dkms", "nvidia-kernel-dkms", "nvidia-persistenced"):
        build_deb(work, name, newer, _depends(name, newer, names))
    key = SiteKey(work / "keys")
    key.ensure("podsys dummy NVIDIA repository <tests@podsys.invalid>")
    key.export_public(work / "repo")
    build_repository(work / "repo", SUITE, key, label="podsys-dummy-nvidia")
    key.stop_agent()
    return versions
