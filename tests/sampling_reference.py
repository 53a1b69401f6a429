"""The sampler's reference decoding: no cache, the whole sequence through the model at every step.

Slow, and plainly right: the KV-cache path (``CachedDecoding``) must sample the
very tokens this does. ``benchmarks/generation.py`` times it for the cache's speed-up.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch


class FullRecompute:
    def __init__(self, model):
        self.model = model

    @contextmanager
    def open(self, rows: int, length: int):
        yield

    def prefill(self, prompts: torch.Tensor, prompt_len: torch.Tensor) -> torch.Tensor:
        rows = torch.arange(prompts.shape[0], device=prompts.device)
        return self.model(prompts)[rows, prompt_len - 1].float()

    def step(self, seq: torch.Tensor, fed: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
        # the window was written into seq at slot, slot + 1, ...; a guidance row that did not advance reads the
        # PAD at its slot, as the cached path does, and slots past the window are never attended to
        rows = torch.arange(seq.shape[0], device=seq.device)[:, None]
        slots = slot[:, None] + torch.arange(fed.shape[1], device=seq.device)
        return self.model(seq[:, : int(slots.max()) + 1])[rows, slots].float()
