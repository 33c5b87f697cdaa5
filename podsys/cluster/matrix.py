"""The compatibility matrix: pinned stacks and the rules that refuse bad combinations.

Pure: `check_combination` and `pick_stack` take data and return verdicts; nothing here touches
the machine. Every violation carries the rule's reason and its source."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from functools import lru_cache
from importlib import resources
from typing import Iterable

import yaml
from pydantic import BaseModel, ConfigDict, Field

from podsys.cluster.hardware import HardwareProfile


def version_key(version: str) -> tuple[int, ...]:
    """'570.133.20' -> (570, 133, 20); '2.26.2-1+cuda12.8' -> (2, 26, 2, 1)."""
    head = str(version).split("+", 1)[0].replace("-", ".")
    return tuple(int(part) for part in head.split(".") if part.isdigit())


def version_at_least(version: str, minimum: str) -> bool:
    return version_key(version) >= version_key(minimum)


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OFED(_Frozen):
    flavour: str  # mlnx_ofed | doca
    version: str
    release: str

    @property
    def key(self) -> str:
        return f"{self.flavour}-{self.release}" if self.flavour == "mlnx_ofed" else f"doca-{'.'.join(self.version.split('.')[:2])}"


class Stack(_Frozen):
    id: str
    branch: str
    support: str = ""
    end_of_life: date | None = None  # the driver branch's end of life; `stack: auto` skips it after
    driver: str
    fabric_manager: str | None = None
    nvlsm: str | None = None
    cuda: str
    cuda_full: str | None = None
    nccl: str
    nccl_tests: str | None = None  # the NVIDIA/nccl-tests release that builds for this CUDA
    cudnn: str | None = None
    dcgm: str | None = None
    ofed: OFED | None = None
    container_toolkit: str | None = None
    enroot: str | None = None
    pyxis: str | None = None
    slurm: str | None = None
    os: tuple[str, ...] = Field(default_factory=tuple)

    @property
    def nccl_cuda(self) -> str | None:
        return self.nccl.split("+cuda", 1)[1] if "+cuda" in self.nccl else None

    def past_end_of_life(self, today: date) -> bool:
        return self.end_of_life is not None and today > self.end_of_life

    def as_vars(self) -> dict:
        data = self.model_dump(mode="json")
        data["os"] = list(self.os)
        return data


@dataclass(frozen=True)
class Matrix:
    stacks: dict[str, Stack]
    rules: dict

    def stack(self, stack_id: str) -> Stack:
        return self.stacks[stack_id]

    def newest_first(self) -> list[Stack]:
        return sorted(self.stacks.values(), key=lambda s: version_key(s.driver), reverse=True)


@dataclass(frozen=True, order=True)
class Violation:
    rule: str
    message: str
    source: str

    def __str__(self) -> str:
        return f"{self.message} [rule {self.rule}; source: {self.source}]"


def parse_matrix(data: dict) -> Matrix:
    stacks = {sid: Stack.model_validate({"id": sid, **body}) for sid, body in data["stacks"].items()}
    return Matrix(stacks=stacks, rules=data["rules"])


@lru_cache(maxsize=1)
def load_matrix() -> Matrix:
    text = (resources.files("podsys") / "data" / "compat-matrix.yaml").read_text()
    return parse_matrix(yaml.safe_load(text))


def check_combination(
    matrix: Matrix,
    stack: Stack,
    os_key: str,
    profiles: Iterable[HardwareProfile] = (),
    layers: Iterable[str] = ("base", "gpu", "infiniband", "slurm", "monitoring"),
    infiniband_stack: str = "matrix",
) -> list[Violation]:
    """Every rule the combination breaks. Empty list = the matrix accepts it."""
    rules = matrix.rules
    layers = set(layers)
    profiles = list(profiles)
    out: list[Violation] = []

    def add(rule: str, message: str) -> None:
        out.append(Violation(rule, message, rules[rule]["source"]))

    if os_key not in stack.os:
        add("stack_supports_os", f"stack {stack.id} is not pinned for {os_key} (it supports {', '.join(stack.os)})")

    minimum = rules["cuda_min_driver"]["minimum_driver"].get(stack.cuda)
    if minimum is None:
        add("cuda_min_driver", f"CUDA {stack.cuda} has no known minimum driver in the matrix")
    elif not version_at_least(stack.driver, minimum):
        add("cuda_min_driver", f"CUDA {stack.cuda} needs driver >= {minimum}, stack {stack.id} pins {stack.driver}")

    if stack.nccl_cuda != stack.cuda:
        add("nccl_matches_cuda", f"NCCL {stack.nccl} is built for CUDA {stack.nccl_cuda}, the stack pins CUDA {stack.cuda}")

    if stack.fabric_manager is not None and stack.fabric_manager != stack.driver:
        add(
            "fabric_manager_equals_driver",
            f"fabric manager {stack.fabric_manager} differs from driver {stack.driver}",
        )

    gpu_table = rules["gpu_minimum"]["gpus"]
    seen_models: set[str] = set()
    for profile in profiles:
        gpu = profile.gpu
        if gpu is None or gpu.model in seen_models:
            continue
        seen_models.add(gpu.model)
        need = gpu_table.get(gpu.model)
        if need is None:
            add("gpu_minimum", f"GPU {gpu.model} is not in the matrix; add its minimum driver and CUDA first")
            continue
        if not version_at_least(stack.driver, str(need["min_driver"])):
            add("gpu_minimum", f"{gpu.model} needs driver >= {need['min_driver']}, stack {stack.id} pins {stack.driver}")
        if not version_at_least(stack.cuda, str(need["min_cuda"])):
            add("gpu_minimum", f"{gpu.model} needs CUDA >= {need['min_cuda']}, stack {stack.id} pins CUDA {stack.cuda}")
        if gpu.nvswitch and not stack.fabric_manager:
            add("nvswitch_needs_fabric_manager", f"{gpu.model} NVSwitch board needs fabric manager; stack {stack.id} pins none")
        if gpu.architecture in rules["blackwell_needs_nvlsm"]["architectures"] and gpu.nvswitch and not stack.nvlsm:
            add("blackwell_needs_nvlsm", f"{gpu.model} HGX needs nvlsm; stack {stack.id} pins none")

    needs_ofed = "infiniband" in layers and infiniband_stack == "matrix" and any(p.has_ib for p in profiles)
    if needs_ofed:
        if stack.ofed is None:
            add("ofed_supports_os", f"stack {stack.id} pins no OFED/DOCA; set infiniband.stack: inbox")
        else:
            supported = rules["ofed_supports_os"]["releases"].get(stack.ofed.key, [])
            if os_key not in supported:
                add(
                    "ofed_supports_os",
                    f"{stack.ofed.flavour} {stack.ofed.version} does not support {os_key}"
                    f" (supports {', '.join(supported) or 'nothing listed'}); use infiniband.stack: inbox",
                )
    return out


def pick_stack(
    matrix: Matrix,
    os_key: str,
    profiles: Iterable[HardwareProfile],
    layers: Iterable[str],
    infiniband_stack: str = "matrix",
    today: date | None = None,
) -> tuple[Stack | None, dict[str, list[Violation]]]:
    """`stack: auto`: the newest supported stack the matrix accepts; else None and why each was
    refused. Stacks past their end of life are never picked (they stay selectable by name)."""
    profiles, layers = list(profiles), list(layers)
    today = today or date.today()
    refused: dict[str, list[Violation]] = {}
    for stack in matrix.newest_first():
        violations = check_combination(matrix, stack, os_key, profiles, layers, infiniband_stack)
        if stack.past_end_of_life(today):
            violations.append(Violation(
                "end_of_life", f"stack {stack.id} is past its end of life ({stack.end_of_life}); pin it by name to use it anyway",
                matrix.rules["end_of_life"]["source"]))
        if not violations:
            return stack, refused
        refused[stack.id] = violations
    return None, refused
