"""Contrastive training of the dual encoder, and how well it retrieves.

Recall is measured on held-out image–caption pairs in both directions, next
to two baselines computed on the same pairs: random ranking, and a bag-of-words
model (a least-squares map from the image's histogram of codes to the
caption's word counts, retrieval by cosine) — a strong lexical baseline in a
world whose captions are templated.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Sequence

import numpy as np
import torch

from mmgen.config.schema import RetrievalConfig
from mmgen.progress import print_above, progress_bar
from mmgen.retrieval.encoder import DualEncoder, EncoderShape, pad_texts


def train_dual_encoder(
    codes: torch.Tensor,
    texts: Sequence[Sequence[int]],
    shape: EncoderShape,
    cfg: RetrievalConfig,
    *,
    log: Callable[[str], None] = print_above,
) -> DualEncoder:
    """Train on aligned pairs: ``codes[i]`` (a code grid) is described by ``texts[i]`` (text piece ids)."""
    torch.manual_seed(cfg.seed)
    model = DualEncoder(shape)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.encoder_lr, weight_decay=0.01)
    text_ids, text_valid = pad_texts(texts, shape.max_text_tokens)
    generator = torch.Generator().manual_seed(cfg.seed)
    batch = min(cfg.encoder_batch_size, len(codes))
    warmup = max(1, cfg.encoder_steps // 20)
    start = time.time()
    for step in progress_bar(range(1, cfg.encoder_steps + 1), desc="dual encoder", unit="step"):
        lr = cfg.encoder_lr * min(1.0, step / warmup) * 0.5 * (1 + math.cos(math.pi * step / cfg.encoder_steps))
        for group in optimizer.param_groups:
            group["lr"] = lr
        pick = torch.randperm(len(codes), generator=generator)[:batch]
        loss = model.sigmoid_loss(model.embed_image(codes[pick]), model.embed_text(text_ids[pick], text_valid[pick]))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 100 == 0 or step == cfg.encoder_steps:
            log(f"dual encoder step {step}: loss {loss.item():.4f} ({time.time() - start:.0f}s)")
    return model.eval()


def recall_at_k(similarity: np.ndarray, groups: np.ndarray, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Query i is answered correctly at k when one of its top-k items shares its group (same caption)."""
    order = np.argsort(-similarity, axis=1)
    hits = groups[order] == groups[:, None]
    return {f"recall@{k}": float(hits[:, :k].any(axis=1).mean()) for k in ks}


@torch.inference_mode()
def encoder_similarity(model: DualEncoder, codes: torch.Tensor, texts: Sequence[Sequence[int]]) -> np.ndarray:
    ids, valid = pad_texts(texts, model.shape.max_text_tokens)
    image = model.embed_image(codes)
    text = model.embed_text(ids, valid)
    return (image @ text.T).numpy()


def bag_of_words_similarity(
    train_codes: torch.Tensor, train_texts: Sequence[Sequence[int]], codes: torch.Tensor, texts: Sequence[Sequence[int]],
    *, codebook_size: int, text_vocab_size: int,
) -> np.ndarray:
    def code_hist(c: torch.Tensor) -> np.ndarray:
        flat = c.flatten(1).numpy()
        out = np.zeros((len(flat), codebook_size), dtype=np.float64)
        np.add.at(out, (np.repeat(np.arange(len(flat)), flat.shape[1]), flat.ravel()), 1.0)
        return out

    def word_counts(ts: Sequence[Sequence[int]]) -> np.ndarray:
        out = np.zeros((len(ts), text_vocab_size), dtype=np.float64)
        for i, t in enumerate(ts):
            np.add.at(out[i], np.asarray(t, dtype=np.int64), 1.0)
        return out

    x, y = code_hist(train_codes), word_counts(train_texts)
    ridge = 1.0 * np.eye(x.shape[1])
    w = np.linalg.solve(x.T @ x + ridge, x.T @ y)
    predicted = code_hist(codes) @ w
    actual = word_counts(texts)
    predicted /= np.linalg.norm(predicted, axis=1, keepdims=True) + 1e-9
    actual /= np.linalg.norm(actual, axis=1, keepdims=True) + 1e-9
    return predicted @ actual.T


def retrieval_report(similarities: dict[str, np.ndarray], groups: np.ndarray) -> dict[str, dict[str, float]]:
    """Recall@1/5 image→caption and caption→image for each named similarity matrix [images, captions]."""
    report = {}
    for name, sim in similarities.items():
        i2t = recall_at_k(sim, groups)
        t2i = recall_at_k(sim.T, groups)
        report[name] = {**{f"image_to_caption_{k}": v for k, v in i2t.items()}, **{f"caption_to_image_{k}": v for k, v in t2i.items()}}
    return report
