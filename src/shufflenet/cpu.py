"""What this CPU offers, as far as the runtimes' fast paths care (read from Linux's /proc/cpuinfo).

ONNX Runtime's kernels differ by instruction set: its blocked NCHWc convolutions work on blocks
of 16 channels with AVX-512 and of 8 with AVX2, and its uint8 x int8 products saturate without
VNNI. The layouts and int8 types chosen for this machine follow from :func:`cpu_flags`.
"""

from __future__ import annotations

import platform

__all__ = ["SIMD_FLAGS", "cpu_flags", "cpu_name", "simd_features"]

# The flags that change which kernels the runtimes run.
SIMD_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8")


def _cpuinfo_field(name: str) -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith(name))
    except (OSError, StopIteration):
        return None


def cpu_flags() -> frozenset[str] | None:
    """The CPU's feature flags, or None where they cannot be read (not Linux)."""
    flags = _cpuinfo_field("flags")
    return None if flags is None else frozenset(flags.split())


def cpu_name() -> str:
    """The CPU's model name (``platform.processor()`` where /proc/cpuinfo is missing)."""
    return _cpuinfo_field("model name") or platform.processor() or platform.machine()


def simd_features() -> list[str] | None:
    """Which of :data:`SIMD_FLAGS` this CPU has (None where unknown), for benchmark records."""
    flags = cpu_flags()
    return None if flags is None else [f for f in SIMD_FLAGS if f in flags]
