"""What this machine computes fast, and the settings that follow from it.

Some levers pay on one CPU and cost on another: ``mixed_bfloat16`` trains 1.7-1.9x faster
than float32 where the CPU has native bfloat16 instructions (x86 AVX512_BF16 or AMX) and
3.5x *slower* where it has only AVX2 (docs/RESULTS.md, performance). ``precision="auto"``
resolves here, from the flags the CPU reports, so a default never depends on the machine it
was tuned on; the run logs what was chosen and why.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from gap_models import records

BF16_CPU_FLAGS: tuple[str, ...] = ("avx512_bf16", "amx_bf16")
"""x86 flags (as /proc/cpuinfo names them) that mean bfloat16 matmuls run natively."""
REPORTED_CPU_FLAGS: tuple[str, ...] = (
    "avx2",
    "fma",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_bf16",
)
"""The flags logged with every run: the ones oneDNN's kernel choice depends on."""
BF16_GPU_MIN_CAPABILITY = (8, 0)
"""Ampere and later: bfloat16 tensor cores."""
ONEDNN_ISAS_WITHOUT_BF16: tuple[str, ...] = (
    "SSE41",
    "AVX",
    "AVX2",
    "AVX2_VNNI",
    "AVX2_VNNI_2",
    "AVX512_CORE",
    "AVX512_CORE_VNNI",
)
"""Values of ``ONEDNN_MAX_CPU_ISA`` that keep oneDNN (TensorFlow's CPU kernels) from the
bfloat16 instructions even where the CPU has them: bfloat16 is then emulated."""


@dataclass(frozen=True)
class Hardware:
    """The facts a setting is chosen from."""

    cpu_model: str
    cpu_flags: frozenset[str]
    gpu_capabilities: tuple[tuple[int, int], ...] = ()
    onednn_max_isa: str = ""  # ONEDNN_MAX_CPU_ISA, when set

    @property
    def native_bf16(self) -> str | None:
        """Why bfloat16 is native here (the flag or GPU), or None where it is emulated."""
        capped = self.onednn_max_isa.upper() in ONEDNN_ISAS_WITHOUT_BF16
        for flag in BF16_CPU_FLAGS:
            if flag in self.cpu_flags and not capped:
                return f"CPU flag {flag}"
        for capability in self.gpu_capabilities:
            if capability >= BF16_GPU_MIN_CAPABILITY:
                return f"GPU compute capability {capability[0]}.{capability[1]}"
        return None

    def reported_flags(self) -> str:
        """The flags that matter, present ones only, space-separated (e.g. "avx2 fma"), and
        oneDNN's ISA cap when one is set."""
        flags = " ".join(flag for flag in REPORTED_CPU_FLAGS if flag in self.cpu_flags)
        if self.onednn_max_isa:
            flags += f" (ONEDNN_MAX_CPU_ISA={self.onednn_max_isa})"
        return flags.strip() or "none"


def read_cpuinfo(text: str) -> tuple[str, frozenset[str]]:
    """CPU model name and flag set from /proc/cpuinfo's text (x86 'flags', Arm 'Features')."""
    model, flags = "", frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = frozenset(value.split())
    return model or platform.processor() or platform.machine(), flags


@cache
def detect() -> Hardware:
    """This machine's CPU model and flags, and the compute capability of any visible GPU."""
    cpuinfo = Path("/proc/cpuinfo")
    text = cpuinfo.read_text(errors="replace") if cpuinfo.exists() else ""
    model, flags = read_cpuinfo(text)
    return Hardware(model, flags, _gpu_capabilities(), os.environ.get("ONEDNN_MAX_CPU_ISA", ""))


def _gpu_capabilities() -> tuple[tuple[int, int], ...]:
    import tensorflow as tf

    capabilities = []
    for device in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(device)
        if "compute_capability" in details:
            capabilities.append(tuple(details["compute_capability"]))
    return tuple(capabilities)


@dataclass(frozen=True)
class Choice:
    """A resolved setting and the reason, as logged on the run."""

    value: str
    reason: str


def resolve_precision(precision: str, hardware: Hardware | None = None) -> Choice:
    """``auto`` becomes mixed_bfloat16 where bfloat16 is native, float32 elsewhere; an
    explicit value is kept (the user's choice wins, and the reason says so)."""
    if precision != "auto":
        return Choice(precision, "set explicitly")
    hardware = hardware or detect()
    native = hardware.native_bf16
    if native:
        return Choice("mixed_bfloat16", f"auto: bfloat16 is native here ({native})")
    return Choice(
        "float32",
        f"auto: no native bfloat16 (flags: {hardware.reported_flags()}); "
        "emulated bfloat16 is ~3.5x slower than float32",
    )


def hardware_params(hardware: Hardware | None = None) -> dict[str, str]:
    """What a run logs about the machine, so runs on different CPUs can be told apart."""
    hardware = hardware or detect()
    gpus = ",".join(f"{major}.{minor}" for major, minor in hardware.gpu_capabilities)
    return records.hardware_params(hardware.cpu_model, hardware.reported_flags(), gpus or "none")
