"""The live `gpu` area: one probe per GPU node collecting nvidia-smi (query, topology, NVLink),
the kernel log, lspci and optionally dcgmi diag, judged by the pure parsers in nvsmi, dmesg,
pcie and dcgm. Nodes whose profile has no GPU get SKIP with the reason and are never probed."""

from __future__ import annotations

from podsys.checks import dcgm, dmesg, nvsmi, pcie
from podsys.checks.findings import Finding, failed, skip
from podsys.checks.live import Context, Probe, Results, sections_script, split_sections
from podsys.checks.live_nodes import KERNEL_LOG, collected, gpu_nodes, only_area


GPU_SECTIONS = {
    "query": nvsmi.QUERY_COMMAND,
    "topo": "nvidia-smi topo -m",
    "nvlink": "nvidia-smi nvlink -s",
    "dmesg": KERNEL_LOG,
    "virt": "systemd-detect-virt || true",
    "lspci": "lspci -vvv",
}


def gpu_sections(dcgm_level: int) -> dict[str, str]:
    sections = dict(GPU_SECTIONS)
    if dcgm_level > 0:
        sections["dcgm"] = f"command -v dcgmi >/dev/null && dcgmi diag -r {int(dcgm_level)}"
    return sections


def gpu_probes(ctx: Context) -> list[Probe]:
    # level 3 runs ~15 min, level 4 longer: give the probe the time its level needs
    timeout = {0: 300, 1: 300, 2: 900, 3: 2700}.get(ctx.dcgm_level, 7200)
    return [Probe(node.name, "gpu", sections_script(gpu_sections(ctx.dcgm_level)), timeout=timeout) for node in gpu_nodes(ctx)]


def judge_gpu_sections(sections: dict[str, str], node: str, profile) -> list[Finding]:
    """Judge one GPU node's collected sections (see GPU_SECTIONS / gpu_sections)."""
    out: list[Finding] = []
    try:
        out += nvsmi.judge_query_gpu(nvsmi.parse_query_gpu(sections.get("query", "")), node, profile)
    except ValueError:
        out.append(failed(node, "gpu.count", detail=f"nvidia-smi failed: {sections.get('query', '')[:160] or 'no output'}",
                          diagnosis="the NVIDIA driver is not working: check nvidia-smi, dkms status and dmesg (Xid 79, module load errors)"))
    for key, parse, judge, check in (
        ("topo", nvsmi.parse_topo, nvsmi.judge_topo, "gpu.topology"),
        ("nvlink", nvsmi.parse_nvlink_status, nvsmi.judge_nvlink_status, "gpu.nvlink"),
    ):
        text = sections.get(key, "")
        try:
            out += judge(parse(text), node, profile)
        except ValueError:
            if key == "nvlink" and (profile.gpu.nvlink is None):
                out.append(skip(node, check, f"profile {profile.id} has no NVLink"))
            else:
                out.append(failed(node, check, detail=f"no usable output: {text[:120] or 'empty'}",
                                  diagnosis="nvidia-smi could not report this: check the driver and fabric manager"))
    out += only_area(dmesg.judge_dmesg(dmesg.parse_dmesg(sections.get("dmesg", "")), node, has_gpu=True, has_hca=False), "gpu")
    virt = sections.get("virt", "").strip().splitlines()[-1:] or ["unknown"]
    if virt[0] == "none":
        try:
            out.append(pcie.judge_acs(pcie.parse_lspci_acs(sections.get("lspci", "")), node))
        except ValueError:
            out.append(skip(node, "gpu.pcie_acs", "lspci -vvv gave no device list (pciutils missing?)"))
    else:
        out.append(skip(node, "gpu.pcie_acs", f"virtualised ({virt[0]}): ACS is expected under passthrough"))
    if "dcgm" not in sections:
        out.append(skip(node, "gpu.dcgm_diag", "not requested (--dcgm-level 0)"))
    elif sections.get("dcgm", "").strip():
        try:
            out += dcgm.judge_dcgmi_diag(dcgm.parse_dcgmi_diag(sections["dcgm"]), node, profile)
        except ValueError:
            out.append(failed(node, "gpu.dcgm_diag", detail=sections["dcgm"][:160],
                              diagnosis="dcgmi diag did not produce a result: systemctl status nvidia-dcgm"))
    else:
        out.append(skip(node, "gpu.dcgm_diag", "dcgmi not installed"))
    return out


def gpu_judge(ctx: Context, results: Results) -> list[Finding]:
    out: list[Finding] = []
    for node, profile, result in collected(ctx, results, "gpu", "gpu.count", out):
        out += judge_gpu_sections(split_sections(result.stdout), node.name, profile)
    return out
