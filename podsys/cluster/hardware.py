"""Hardware profiles: what a node has (GPUs, NVSwitch, HCAs) and what it should measure.

Built-in profiles live in podsys/data/hardware/<id>.yaml; a manifest may add its own under
`hardware_profiles`, in the same shape."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# A GPU model or architecture lands in gres.conf/slurm.conf lines and in version checks: one word.
WORD_RE = r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,31}$"
# nvidia-smi's PCI bus id, e.g. 00000000:07:00.0 (domain:bus:device.function).
PCI_BUS_ID_RE = r"^[0-9A-Fa-f]{4,8}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\.[0-7]$"


class NVLink(_Strict):
    generation: int
    links_per_gpu: int
    bandwidth_gbs: float = Field(description="per GPU, per direction, GB/s")


class PCIe(_Strict):
    generation: int
    width: int = 16


class GPUSpec(_Strict):
    model: str = Field(pattern=WORD_RE, description="matrix key: A100, H100, H200, B200, L40S")
    product_name: str = Field(description="the name nvidia-smi reports")
    count: int = Field(ge=1)
    architecture: str = Field(pattern=WORD_RE)
    compute_capability: str = Field(pattern=r"^[0-9]{1,2}\.[0-9]{1,2}$")
    memory_mib: int | None = None
    form_factor: Literal["sxm", "pcie"] = "sxm"
    nvswitch: bool = False
    nvlink: NVLink | None = None
    pcie: PCIe | None = None
    pci_bus_ids: list[Annotated[str, Field(pattern=PCI_BUS_ID_RE)]] = Field(default_factory=list)


class HCASpec(_Strict):
    count: int = Field(ge=1)
    rate_gbps: int
    link_layer: Literal["InfiniBand", "Ethernet"] = "InfiniBand"
    model: str | None = None


class Threshold(_Strict):
    """threshold = limit x fraction; WARN between fraction and warn_fraction."""

    unit: str
    limit: float
    fraction: float = Field(gt=0, le=1.2)
    warn_fraction: float | None = None
    source: str

    @property
    def fail_below(self) -> float:
        return round(self.limit * self.fraction, 3)

    @property
    def warn_below(self) -> float | None:
        return None if self.warn_fraction is None else round(self.limit * self.warn_fraction, 3)


class HardwareProfile(_Strict):
    id: str | None = None
    description: str = ""
    gpu: GPUSpec | None = None
    hca: HCASpec | None = None
    acceptance: dict[str, Threshold] = Field(default_factory=dict)

    @property
    def has_gpu(self) -> bool:
        return self.gpu is not None

    @property
    def has_ib(self) -> bool:
        return self.hca is not None and self.hca.link_layer == "InfiniBand"


@lru_cache(maxsize=1)
def builtin_profiles() -> dict[str, HardwareProfile]:
    root = resources.files("podsys") / "data" / "hardware"
    profiles: dict[str, HardwareProfile] = {}
    for entry in sorted(root.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".yaml"):
            data = yaml.safe_load(entry.read_text())
            profiles[data["id"]] = HardwareProfile.model_validate(data)
    return profiles
