"""Test hooks that make a training job fail at a point a test can name (the crash-resume and NaN tests).

``MMGEN_TEST_FAULT`` holds one point; nothing happens unless it is set, and runs never set it:

- ``pause:step-N``: step N stops after its backward pass, before the optimizer steps;
- ``pause:save-step-N``: the save of step N stops after its data files, before its ``.metadata``;
- ``nan:step-N``: rank 0's loss of step N becomes NaN (so do the gradients, after the reduction).

A pause touches ``$MMGEN_TEST_FAULT_MARKER`` (from rank 0) and sleeps until the test kills the job.
"""

from __future__ import annotations

import os
import time

import torch.distributed as dist

FAULT_ENV = "MMGEN_TEST_FAULT"


def fault_requested(point: str) -> bool:
    return os.environ.get(FAULT_ENV) == point


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def pause_if_asked(point: str) -> None:
    if not fault_requested(f"pause:{point}"):
        return
    marker = os.environ.get(f"{FAULT_ENV}_MARKER", "")
    if marker and _rank() == 0:
        with open(marker, "w") as f:
            f.write(point)
    while True:
        time.sleep(60)


def nan_asked(point: str) -> bool:
    return fault_requested(f"nan:{point}") and _rank() == 0
