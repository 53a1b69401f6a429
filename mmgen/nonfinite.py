"""What training does with a NaN or inf loss or gradient: skip the step, or stop the run (``training.nonfinite``).

The check must come before the optimizer steps: one non-finite gradient makes every parameter it reaches
NaN, Adam's moments keep the poison for good, and the next checkpoint would save it. Every rank takes the
same decision (the flags are reduced across ranks), so no rank steps while another skips.

Usage in a training loop, after ``backward()`` (and any gradient clipping), before ``optimizer.step()``::

    guard = NonFiniteGuard(cfg.training.nonfinite)
    ...
    if guard.allow_step(step, all_finite([loss, *gradients(model)])):
        optimizer.step()
"""

from __future__ import annotations

import logging
from typing import Iterable

import torch
import torch.distributed as dist

NONFINITE_POLICIES = ("skip", "stop")

MAX_CONSECUTIVE_SKIPS = 10
"""Under "skip", this many non-finite steps in a row stop the run: training has diverged, not hiccuped."""

log = logging.getLogger(__name__)


class NonFiniteError(RuntimeError):
    """Training met a NaN or inf and its policy (or too many skips in a row) says stop."""


def gradients(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.grad for p in model.parameters() if p.grad is not None]


def all_finite(tensors: Iterable[torch.Tensor | None]) -> bool:
    """Whether every element of ``tensors`` is finite on every rank (one all-reduce when distributed).

    A DTensor is checked through its local shard; the reduction covers the other shards.
    """
    flags = [_local(t).isfinite().all() for t in tensors if t is not None and _local(t).numel()]
    ok = torch.stack(flags).all() if flags else torch.tensor(True)
    if dist.is_initialized() and dist.get_world_size() > 1:
        bad = (~ok).to(torch.int32)
        dist.all_reduce(bad)  # SUM: gloo has no MAX for every dtype, and any positive count means "not finite"
        return int(bad) == 0
    return bool(ok)


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


class NonFiniteGuard:
    """Decides, step by step, whether the optimizer may step; counts and reports skipped steps."""

    def __init__(self, policy: str, *, what: str = "training", max_consecutive_skips: int = MAX_CONSECUTIVE_SKIPS):
        if policy not in NONFINITE_POLICIES:
            raise ValueError(f"non-finite policy must be one of {NONFINITE_POLICIES}, got {policy!r}")
        self.policy = policy
        self.what = what
        self.max_consecutive_skips = max_consecutive_skips
        self.skipped = 0
        self.consecutive = 0

    def allow_step(self, step: int, finite: bool) -> bool:
        """True: step the optimizer. False: skip this step (zero the gradients). Raises ``NonFiniteError`` to stop."""
        if finite:
            self.consecutive = 0
            return True
        if self.policy == "stop":
            raise NonFiniteError(f"{self.what} step {step}: the loss or a gradient is NaN or inf; stopped before the "
                                 f"optimizer step (policy 'stop'; 'skip' would skip such steps), so no checkpoint "
                                 f"holds it")  # fmt: skip
        self.skipped += 1
        self.consecutive += 1
        if self.consecutive >= self.max_consecutive_skips:
            raise NonFiniteError(f"{self.what} step {step}: the loss or a gradient was NaN or inf on "
                                 f"{self.consecutive} steps in a row; training has diverged (lower the learning "
                                 f"rate or resume from an earlier checkpoint)")  # fmt: skip
        log.warning("%s step %d: the loss or a gradient is NaN or inf; step skipped (%d skipped so far)",
                    self.what, step, self.skipped)  # fmt: skip
        return False
