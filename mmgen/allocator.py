"""glibc malloc settings for CPU training ranks, which the launchers set unless the user set them.

By default glibc hands every freed block above its mmap threshold back to the
kernel and page-faults it in again on the next step, and trims the heap top
after each large free; a training step frees and reallocates the same large
activations and gradients every time. Keeping them mapped was measured at
+5 % tokens/s per rank on the demo's pretraining (2-core AVX2 EPYC, fp32) and
about 2x at a 65k vocabulary (docs/BENCHMARKS.md). The price is resident
memory that is not returned between steps (up to the 512 MiB top pad more).
Variables are read when a process starts, so they must be in a rank's
environment before it is launched.

    python -m mmgen.allocator     # prints "NAME=VALUE ..." for `env`, nothing where they do not apply
"""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping

GLIBC_TRAINING_SETTINGS = {
    "MALLOC_MMAP_THRESHOLD_": str(16 * 2**30),  # never mmap a block: freed memory stays in the heap
    "MALLOC_TRIM_THRESHOLD_": str(16 * 2**30),  # never trim the heap top back to the kernel
    "MALLOC_TOP_PAD_": str(512 * 2**20),  # grow the heap in large steps
}


def uses_glibc() -> bool:
    return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def training_allocator_env(environ: Mapping[str, str] = os.environ, *, cpu: bool = True) -> dict[str, str]:
    """The settings to add to a CPU training rank's environment: each one the user has not set, on Linux glibc."""
    if not cpu or not uses_glibc():
        return {}
    return {name: value for name, value in GLIBC_TRAINING_SETTINGS.items() if name not in environ}


if __name__ == "__main__":
    import torch

    print(" ".join(f"{k}={v}" for k, v in training_allocator_env(cpu=not torch.cuda.is_available()).items()))
