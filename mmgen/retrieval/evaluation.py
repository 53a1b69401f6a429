"""Held-out bits per token of main documents, with or without retrieved context.

The retrieval-augmented model is scored on each held-out document after its
retrieved prefix (``BOS r₁ SEP r₂ SEP``); the baseline after BOS alone. Only the
main document's tokens are scored, so both numbers measure the same targets.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from mmgen.eval.likelihood import continuation_logprobs


@torch.inference_mode()
def main_document_bits(model, documents: Sequence[np.ndarray], prefixes: Sequence[np.ndarray], *, image_range: tuple[int, int],
                       max_len: int) -> dict[str, float]:
    """Bits per text token and per image token of ``documents`` (each starting with BOS) after their ``prefixes``."""
    sums = {"text": 0.0, "image": 0.0}
    counts = {"text": 0, "image": 0}
    for doc, prefix in zip(documents, prefixes):
        body = np.asarray(doc[1:], dtype=np.int64)[: max(0, max_len - len(prefix))]
        if len(body) == 0:
            continue
        logp = continuation_logprobs(model, list(map(int, prefix)), [list(map(int, body))], reuse_prefix=False)[0].numpy()
        is_image = (body >= image_range[0]) & (body < image_range[1])
        for name, mask in (("text", ~is_image), ("image", is_image)):
            sums[name] -= float(logp[mask].sum())
            counts[name] += int(mask.sum())
    return {
        f"{name}_bits_per_token": sums[name] / max(counts[name], 1) / math.log(2) for name in sums
    } | {f"{name}_tokens": counts[name] for name in counts}
