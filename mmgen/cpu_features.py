"""What this machine's CPU is and computes natively, read from /proc/cpuinfo (no torch import, so a config
preset can ask at load time)."""

from __future__ import annotations

import functools


@functools.cache
def _cpuinfo() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return f.read()
    except OSError:
        return ""


def _flags() -> set[str]:
    line = next((line for line in _cpuinfo().splitlines() if line.startswith("flags")), "")
    return set(line.partition(":")[2].split())


def cpu_has_bf16() -> bool:
    """True when this CPU computes bf16 natively (AVX512-BF16 or AMX); emulated bf16 is slower than fp32."""
    return bool({"avx512_bf16", "amx_bf16"} & _flags())


def cpu_has_amx_bf16() -> bool:
    """True on the CPU family whose bf16 matrix tiles (AMX) reach ~1 TFLOP/s per core: Intel Xeon since
    Sapphire Rapids."""
    return "amx_bf16" in _flags()


def cpu_model_name() -> str:
    """The CPU's marketing name ("AMD EPYC 7R13 Processor"), or "" where /proc/cpuinfo has none."""
    line = next((line for line in _cpuinfo().splitlines() if line.startswith("model name")), "")
    return line.partition(":")[2].strip()
