"""Let torchtitan's CUDA-minded Trainer run on a machine with no accelerator.

torchtitan picks its device once, at import time, from
``torch._utils._get_available_device_type()`` (falling back to "cuda"), and
later asks that device's module for names, memory stats and the current
device. On a CPU-only machine we answer those questions for ``torch.cpu``:
the CPU's model name, and the process's resident memory as its "memory"
(torchtitan would otherwise print ``memory: -0.00GiB(-0.00%)``).
This must run before the first ``import torchtitan``; ``apply()`` is
idempotent and does nothing when CUDA (or another accelerator) is present.
"""

from __future__ import annotations

import os
import platform
import resource
import sys
from types import SimpleNamespace

import torch

from mmgen.cpu_features import cpu_model_name

_applied = False


def accelerator_present() -> bool:
    return torch.cuda.is_available() or (
        hasattr(torch, "accelerator") and torch.accelerator.is_available()
    )


def apply() -> bool:
    """Patch torch for CPU-only torchtitan; returns True when patches are active."""
    global _applied
    if _applied:
        return True
    if accelerator_present():
        return False
    if any(m == "torchtitan" or m.startswith("torchtitan.") for m in sys.modules):
        raise RuntimeError("mmgen.train.cpu_compat.apply() must run before torchtitan is imported")

    import torch._utils as tutils

    tutils._get_available_device_type = lambda: "cpu"
    cpu = torch.cpu
    name = cpu_model_name() or platform.processor() or platform.machine() or "cpu"
    cpu.get_device_name = lambda device=None: name
    # total_memory feeds torchtitan's memory percentages; physical RAM is the honest answer
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 0
    cpu.get_device_properties = lambda device=None: SimpleNamespace(name=name, total_memory=total)
    cpu.memory_stats = lambda device=None: resident_memory_stats()
    cpu.reset_peak_memory_stats = lambda device=None: None
    cpu.empty_cache = lambda: None
    # gloo's barrier wants an integer device id
    cpu.current_device = lambda: 0
    _applied = True
    return True


def resident_memory_stats() -> dict[str, int]:
    """This process's resident memory in the keys torchtitan reads from a device's memory stats.

    "reserved" is the peak resident set since the process started (the kernel keeps no resettable peak, so
    torchtitan's per-interval reset has no effect on it); "active" is the resident set now.
    """
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)  # KiB on Linux
    try:
        with open("/proc/self/statm") as f:
            now = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        now = peak
    # the kernel updates its peak lazily, so it may trail the resident set read a moment later
    return {"reserved_bytes.all.peak": max(peak, now), "active_bytes.all.peak": now}
