"""What the CPU can do: its name, its instruction-set flags, and whether bf16 inference is worth measuring.

bf16 autocast only pays off on CPUs with native bf16 arithmetic (Intel AMX, AVX-512 BF16, Arm BF16);
elsewhere PyTorch emulates it and it is several times slower than fp32. Whether it is *used* is decided
by measurement (``benchmarks/inference_speed.py``), not by these flags alone.
"""
from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
# The flags that matter for inference speed, in the order reports list them.
SPEED_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_bf16",
               "amx_int8", "asimd", "bf16", "sve")


@dataclass(frozen=True)
class CpuInfo:
    """A CPU's model name, its feature flags (lower case) and how many logical cores this process sees."""

    name: str
    flags: frozenset[str]
    logical_cores: int

    @property
    def avx2(self) -> bool:
        return "avx2" in self.flags

    @property
    def avx512(self) -> bool:
        return "avx512f" in self.flags

    @property
    def amx_bf16(self) -> bool:
        return "amx_bf16" in self.flags

    @property
    def native_bf16(self) -> bool:
        """True when the CPU multiplies bf16 in hardware (AMX, AVX-512 BF16 or Arm BF16)."""
        return bool(self.flags & {"amx_bf16", "avx512_bf16", "bf16"})

    @property
    def bf16_worth_measuring(self) -> bool:
        """bf16 can only be faster than fp32 with native bf16 arithmetic; without it, skip the measurement."""
        return self.native_bf16

    def speed_flags(self) -> list[str]:
        """The present flags out of :data:`SPEED_FLAGS`, e.g. ``["avx2", "fma", "avx512f"]``."""
        return [flag for flag in SPEED_FLAGS if flag in self.flags]

    def describe(self) -> str:
        """One line for reports, e.g. ``AMD EPYC, 2 cores, avx2 fma avx512f avx512_bf16``."""
        flags = " ".join(self.speed_flags()) or "no AVX2/AVX-512/AMX"
        return f"{self.name}, {self.logical_cores} cores, {flags}"


def parse_cpuinfo(text: str) -> tuple[str, frozenset[str]]:
    """Model name and flags of the first processor in ``/proc/cpuinfo`` text (x86 ``flags``, Arm ``Features``)."""
    name, flags = "", frozenset()
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            if name and flags:
                break  # end of the first processor's block
            continue
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and not name:
            name = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = frozenset(value.lower().split())
    return name, flags


def read_cpu_info(cpuinfo: Path = CPUINFO) -> CpuInfo:
    """The running machine's CPU; on systems without ``/proc/cpuinfo`` the flags are empty."""
    try:
        name, flags = parse_cpuinfo(cpuinfo.read_text(errors="replace"))
    except OSError:
        name, flags = "", frozenset()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return CpuInfo(name=name or platform.processor() or platform.machine(), flags=flags, logical_cores=cores)
