"""Embedding pretokenized documents: split each token sequence into its text and its code grids.

A document's embedding is the normalised mean of one text embedding (all its
text, in order, truncated to the text tower's length) and one embedding per
image. Query dropout (CM3leon) hides a random share of the tokens of the query
document when embedding it for retrieval, so neighbours are chosen for the gist
of a document rather than its exact wording.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch

from mmgen.retrieval.encoder import DualEncoder, pad_texts


def split_document(ids: np.ndarray, vocab) -> tuple[np.ndarray, np.ndarray]:
    """(text piece ids in SentencePiece's space, code grids [n_images, h, w]) of one token sequence."""
    ids = np.asarray(ids, dtype=np.int64)
    text_start, text_stop = vocab.text_range
    image_start, image_stop = vocab.image_range
    text = ids[(ids >= text_start) & (ids < text_stop)] - text_start
    codes = ids[(ids >= image_start) & (ids < image_stop)] - image_start
    h, w = vocab.grid
    if len(codes) % (h * w):
        raise ValueError(f"document holds {len(codes)} image codes, not a multiple of {h * w}")
    return text, codes.reshape(-1, h, w)


@torch.inference_mode()
def embed_documents(
    encoder: DualEncoder,
    documents: Iterable[np.ndarray],
    vocab,
    *,
    batch_size: int = 256,
    query_dropout: float = 0.0,
    seed: int = 0,
) -> np.ndarray:
    """Unit document embeddings [N, D] (float32); ``query_dropout`` masks that share of each document's tokens."""
    device = next(encoder.parameters()).device
    rng = np.random.default_rng(seed)
    texts: list[np.ndarray] = []
    grids: list[np.ndarray] = []
    owner_of_grid: list[int] = []
    for n, ids in enumerate(documents):
        text, codes = split_document(ids, vocab)
        if query_dropout:
            text = text[rng.random(len(text)) >= query_dropout]
        texts.append(text)
        grids.extend(codes)
        owner_of_grid.extend([n] * len(codes))
    n_docs = len(texts)
    total = torch.zeros(n_docs, encoder.dim)
    parts = torch.zeros(n_docs)
    for start in range(0, n_docs, batch_size):
        chunk = texts[start : start + batch_size]
        has_text = torch.tensor([len(t) > 0 for t in chunk])
        ids, valid = pad_texts(chunk, encoder.shape.max_text_tokens)
        valid[~has_text, 0] = True  # an empty text embeds as one pad token, then counts for nothing
        emb = encoder.embed_text(ids.to(device), valid.to(device)).float().cpu()
        total[start : start + len(chunk)] += emb * has_text.unsqueeze(1)
        parts[start : start + len(chunk)] += has_text.float()
    owners = torch.tensor(owner_of_grid, dtype=torch.long)
    for start in range(0, len(grids), batch_size):
        codes = torch.from_numpy(np.stack(grids[start : start + batch_size]))
        valid = None
        if query_dropout:
            valid = torch.from_numpy(rng.random(codes.shape) >= query_dropout)
            valid.view(len(codes), -1)[:, 0] = True  # never hide a whole image
        emb = encoder.embed_image(codes.to(device), None if valid is None else valid.to(device)).float().cpu()
        total.index_add_(0, owners[start : start + len(codes)], emb)
        parts.index_add_(0, owners[start : start + len(codes)], torch.ones(len(codes)))
    mean = total / parts.clamp(min=1).unsqueeze(1)
    return torch.nn.functional.normalize(mean, dim=1).numpy().astype(np.float32)


def has_both_modalities(documents: Sequence[np.ndarray], vocab) -> np.ndarray:
    """Boolean [N]: the document holds text and at least one image (CM3leon keeps only such neighbours)."""
    text_start, text_stop = vocab.text_range
    image_start, image_stop = vocab.image_range
    out = np.zeros(len(documents), dtype=bool)
    for i, ids in enumerate(documents):
        ids = np.asarray(ids)
        out[i] = bool(((ids >= text_start) & (ids < text_stop)).any() and ((ids >= image_start) & (ids < image_stop)).any())
    return out
