"""Log-likelihoods under the decoder: continuations of a shared prefix, and bits per token.

``continuation_logprobs`` scores many continuations of one prefix
(``grouped_continuation_logprobs``: of many prefixes). With ``reuse_prefix``
each prefix runs once through the KV cache (all prefixes batched together),
its keys/values are copied into every row of a cache sized for the batch, and
only the continuations run — right-padded, each row at its own cache slots, so
padding never reaches a scored token. Without it every row recomputes
prefix + continuation in one uncached forward (the baseline the benchmark
compares against, and what the tests check the reuse path equals).

Log-probabilities are taken over the whole vocabulary in float32.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch

from mmgen.model.loss import per_token_loss
from mmgen.progress import progress_bar


def common_prefix_length(sequences: Sequence[Sequence[int]]) -> int:
    if not sequences:
        return 0
    n = min(len(s) for s in sequences)
    first = sequences[0]
    for i in range(n):
        if any(s[i] != first[i] for s in sequences[1:]):
            return i
    return n


def _attention_caches(model):
    return [block.attention.kv_cache for block in model.layers.values()]


def continuation_logprobs(
    model,
    prefix: Sequence[int],
    continuations: Sequence[Sequence[int]],
    *,
    pad_id: int = 0,
    batch_size: int = 32,
    reuse_prefix: bool = True,
    desc: str = "scoring",
) -> list[torch.Tensor]:
    """log p(c_j | prefix, c_<j) for every token of every continuation (float32 CPU tensors).

    ``prefix`` needs at least one token (BOS); continuations may be empty.
    """
    return grouped_continuation_logprobs(model, [(prefix, continuations)], pad_id=pad_id, batch_size=batch_size,
                                         reuse_prefix=reuse_prefix, desc=desc)[0]


@torch.inference_mode()
def grouped_continuation_logprobs(
    model,
    groups: Sequence[tuple[Sequence[int], Sequence[Sequence[int]]]],
    *,
    pad_id: int = 0,
    batch_size: int = 32,
    reuse_prefix: bool = True,
    desc: str = "scoring",
) -> list[list[torch.Tensor]]:
    """``continuation_logprobs`` for many (prefix, continuations) groups at once.

    With ``reuse_prefix`` all prefixes are prefilled together (right-padded),
    and each batch of continuation rows gathers its group's keys/values and
    continues at that prefix's own length (per-row cache slots).
    """
    if any(len(prefix) == 0 for prefix, _ in groups):
        raise ValueError("every prefix needs at least one token (e.g. BOS)")
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    prefix_len = torch.tensor([len(p) for p, _ in groups], device=device)
    P = int(prefix_len.max())
    prefixes = torch.full((len(groups), P), pad_id, dtype=torch.long, device=device)
    for g, (prefix, _) in enumerate(groups):
        prefixes[g, : len(prefix)] = torch.tensor(list(prefix), dtype=torch.long)
    rows = [(g, list(c)) for g, (_, conts) in enumerate(groups) for c in conts]
    results: list[list[torch.Tensor]] = [[torch.empty(0)] * len(conts) for _, conts in groups]
    index_in_group = [i for _, conts in groups for i in range(len(conts))]
    if reuse_prefix:
        first_logits, prefix_kv = _prefill(model, prefixes, prefix_len, batch_size, dtype, device)
    try:
        for start in progress_bar(range(0, len(rows), batch_size), desc=desc, unit="batch"):
            chunk = rows[start : start + batch_size]
            group = torch.tensor([g for g, _ in chunk], device=device)
            L = max(1, max(len(c) for _, c in chunk))
            tokens = torch.full((len(chunk), L), pad_id, dtype=torch.long, device=device)
            for row, (_, c) in enumerate(chunk):
                tokens[row, : len(c)] = torch.tensor(c, dtype=torch.long)
            if reuse_prefix:
                model.setup_cache(len(chunk), P + L, dtype=dtype, device=device)
                for cache, (k, v) in zip(_attention_caches(model), prefix_kv):
                    cache.k[:, :, :P] = k[group]
                    cache.v[:, :, :P] = v[group]
                if model.slot_tokens is not None:
                    model.slot_tokens[:, :P] = prefixes[group]
                slots = prefix_len[group, None] + torch.arange(L, device=device)
                logits = model(tokens, input_pos=slots).float()
                # the token at continuation index j is predicted by the logits of index j - 1 (the prefix's for j = 0)
                logits = torch.cat([first_logits[group, None], logits[:, :-1]], dim=1)
            else:
                full = torch.cat([prefixes[group], torch.full_like(tokens, pad_id)], dim=1)
                at = prefix_len[group, None] + torch.arange(L, device=device)
                full.scatter_(1, at, tokens)
                logits = model(full).float().gather(1, (at - 1)[..., None].expand(-1, -1, model.vocab_size))
            logp = -per_token_loss(logits, tokens)
            for row, (g, c) in enumerate(chunk):
                results[g][index_in_group[start + row]] = logp[row, : len(c)].cpu()
    finally:
        if reuse_prefix:
            model.clear_cache()
    return results


def _prefill(model, prefixes, prefix_len, batch_size, dtype, device):
    """Logits after each prefix [G, V] and every layer's prefix keys/values [G, H, P, D]."""
    G, P = prefixes.shape
    firsts, kv = [], []
    try:
        for start in range(0, G, batch_size):
            part = prefixes[start : start + batch_size]
            model.setup_cache(len(part), P, dtype=dtype, device=device)
            logits = model(part, input_pos=torch.arange(P, device=device))
            firsts.append(logits[torch.arange(len(part), device=device), prefix_len[start : start + len(part)] - 1].float())
            kv.append([(c.k.clone(), c.v.clone()) for c in _attention_caches(model)])
    finally:
        model.clear_cache()
    layers = [(torch.cat([step[i][0] for step in kv]), torch.cat([step[i][1] for step in kv])) for i in range(len(kv[0]))]
    return torch.cat(firsts), layers


@torch.inference_mode()
def bits_per_token(
    model,
    documents: Iterable[np.ndarray],
    *,
    image_range: tuple[int, int],
    pad_id: int,
    max_len: int,
    batch_size: int = 16,
) -> dict[str, float]:
    """Held-out bits per token: image targets are image codes, text targets every other token (as in training).

    Documents longer than ``max_len`` are cut to it (counted in ``truncated``).
    """
    device = next(model.parameters()).device
    docs = [np.asarray(d, dtype=np.int64) for d in documents]
    truncated = sum(len(d) > max_len for d in docs)
    docs = sorted((d[:max_len] for d in docs if len(d) > 1), key=len)
    sums = {"text": 0.0, "image": 0.0}
    counts = {"text": 0, "image": 0}
    for start in progress_bar(range(0, len(docs), batch_size), desc="bits per token", unit="batch"):
        chunk = docs[start : start + batch_size]
        T = max(len(d) for d in chunk)
        tokens = torch.full((len(chunk), T), pad_id, dtype=torch.long)
        valid = torch.zeros(len(chunk), T - 1, dtype=torch.bool)
        for row, d in enumerate(chunk):
            tokens[row, : len(d)] = torch.from_numpy(d)
            valid[row, : len(d) - 1] = True
        tokens = tokens.to(device)
        nll = per_token_loss(model(tokens[:, :-1]), tokens[:, 1:]).cpu()
        targets = tokens[:, 1:].cpu()
        is_image = valid & (targets >= image_range[0]) & (targets < image_range[1])
        for name, keep in (("image", is_image), ("text", valid & ~is_image)):
            sums[name] += float(nll[keep].sum())
            counts[name] += int(keep.sum())
    ln2 = float(np.log(2.0))
    return {
        "text_bits_per_token": sums["text"] / max(counts["text"], 1) / ln2,
        "image_bits_per_token": sums["image"] / max(counts["image"], 1) / ln2,
        "text_tokens": counts["text"],
        "image_tokens": counts["image"],
        "documents": len(docs),
        "truncated": truncated,
    }
