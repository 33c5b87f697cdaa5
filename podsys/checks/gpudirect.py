"""GPUDirect RDMA either way: which path is active on a node, and FAIL when neither is.

* nvidia_peermem (MLNX/DOCA OFED's peer-memory API) is active when the module is loaded
  (/proc/modules; NCCL uses GDR with peermem only then).
* DMA-BUF needs the open kernel modules, whose `modinfo -F license nvidia` prints
  "Dual MIT/GPL" (the proprietary modules print "NVIDIA"; MODULE_LICENSE in
  NVIDIA/open-gpu-kernel-modules kernel-open/nvidia), and a kernel with dma-buf move_notify
  (5.12 or newer; NCCL's DMA-BUF support needs it).

Pure: the caller hands in the loaded modules (podsys.checks.versions.parse_modules of
/proc/modules or lsmod), the license line and `uname -r` (None: not collected).

Which path a node *must* run (and so whether nvidia_peermem is a required module) is the
plan's (podsys.cluster.stack_packages.gpudirect_path); this judge reports which one is active."""

from __future__ import annotations

import re

from podsys.checks.findings import CPU_ONLY_REASON, Finding, failed, passed, skip
from podsys.cluster.hardware import HardwareProfile

CHECK = "versions.gpudirect"
DMABUF_MIN_KERNEL = (5, 12)


def _kernel_version(release: str) -> tuple[int, int] | None:
    m = re.match(r"\s*(\d+)\.(\d+)", release or "")
    return (int(m[1]), int(m[2])) if m else None


def judge_gpudirect(modules: set[str] | frozenset[str], nvidia_license: str | None, kernel_release: str | None,
                    node: str, profile: HardwareProfile | None) -> Finding:
    """One finding: PASS naming the active path (nvidia_peermem or DMA-BUF), FAIL when neither."""
    if profile is None:
        return skip(node, CHECK, "no hardware profile: whether GPUDirect RDMA is needed depends on it")
    if profile.gpu is None:
        return skip(node, CHECK, CPU_ONLY_REASON)
    if not profile.has_ib:
        return skip(node, CHECK, "no InfiniBand HCA in the profile: GPUDirect RDMA does not apply")
    if "nvidia" not in modules:
        return failed(node, CHECK, detail="the nvidia module is not loaded, so neither nvidia_peermem nor DMA-BUF can work",
                      diagnosis="load the driver first (reboot after install; dkms status, dmesg | grep NVRM)")
    if "nvidia_peermem" in modules:
        return passed(node, CHECK, value="nvidia_peermem", detail="GPUDirect RDMA through nvidia_peermem (OFED peer-memory API)")
    if nvidia_license is None or kernel_release is None:
        # A module list alone (`podsys check parse modules`) cannot show DMA-BUF.
        return skip(node, CHECK, "nvidia_peermem is not loaded; whether DMA-BUF is possible needs `modinfo -F license nvidia` "
                                 "and `uname -r` (podsys check parse gpudirect on the versions probe's output)")
    license_text = (nvidia_license or "").strip()
    kernel = _kernel_version(kernel_release or "")
    open_modules = "MIT" in license_text
    new_kernel = kernel is not None and kernel >= DMABUF_MIN_KERNEL
    if open_modules and new_kernel:
        return passed(node, CHECK, value="dmabuf",
                      detail=f"GPUDirect RDMA through DMA-BUF (open kernel modules, kernel {kernel_release.strip()})")
    why = []
    if not open_modules:
        why.append(f"the nvidia module is not the open one (license {license_text or 'unknown'})")
    if not new_kernel:
        why.append(f"kernel {kernel_release or 'unknown'} is older than {DMABUF_MIN_KERNEL[0]}.{DMABUF_MIN_KERNEL[1]}")
    return failed(node, CHECK, value="none", detail="neither nvidia_peermem is loaded nor DMA-BUF possible: " + "; ".join(why),
                  diagnosis="with MLNX/DOCA OFED: modprobe nvidia_peermem (podsys deploy --tags gpu loads it after the driver); "
                            "with the inbox rdma stack: use the open kernel modules (gpu.flavour: open)")
