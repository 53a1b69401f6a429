"""Device and precision choices shared by every stage."""

from __future__ import annotations

import functools
import os

import torch


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


@functools.cache
def cpu_has_bf16() -> bool:
    """True when this CPU computes bf16 natively (AVX512-BF16 or AMX); emulated bf16 is slower than fp32."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def bf16_supported(device: torch.device | str) -> bool:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_bf16()


def machine_description() -> dict:
    """What a figure was measured on: CPU model, cores, whether bf16 is native, GPU if any, torch version.

    The two CPU families these machines come in train the demo at very different speeds (fp32 on AVX2 vs
    bf16 on AVX512-BF16/AMX), so every recorded figure carries this.
    """
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    return {
        "cpu": model,
        "cores": len(os.sched_getaffinity(0)),
        "cpu_bf16": cpu_has_bf16(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch": torch.__version__,
    }


def compute_dtype(setting: str, device: torch.device | str) -> torch.dtype:
    """Resolve a precision setting ('auto', 'bfloat16', 'float32') for a device."""
    if setting == "auto":
        return torch.bfloat16 if bf16_supported(device) else torch.float32
    return {"bfloat16": torch.bfloat16, "float32": torch.float32}[setting]
