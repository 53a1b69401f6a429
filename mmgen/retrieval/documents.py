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

from mmgen.progress import progress_bar
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
    first_index: int = 0,
    desc: str = "embed documents",
) -> np.ndarray:
    """Unit document embeddings [N, D] (float32); ``query_dropout`` masks that share of each document's tokens.

    Document ``n`` is the ``first_index + n``-th of its collection: its dropout
    pattern is drawn from ``(seed, first_index + n)`` alone and each batch holds
    ``batch_size`` documents with all their images, so a collection embedded in
    slices that start at multiples of ``batch_size`` (one per rank) gives the very
    same vectors as one pass over it.
    """
    device = next(encoder.parameters()).device
    texts: list[np.ndarray] = []
    grids: list[np.ndarray] = []
    grid_valid: list[np.ndarray] = []
    owner_of_grid: list[int] = []
    for n, ids in enumerate(documents):
        text, codes = split_document(ids, vocab)
        if query_dropout:
            rng = np.random.default_rng((seed, first_index + n))
            text = text[rng.random(len(text)) >= query_dropout]
            for grid in codes:
                valid = rng.random(grid.shape) >= query_dropout
                valid.reshape(-1)[0] = True  # never hide a whole image
                grid_valid.append(valid)
        texts.append(text)
        grids.extend(codes)
        owner_of_grid.extend([n] * len(codes))
    n_docs = len(texts)
    total = torch.zeros(n_docs, encoder.dim)
    parts = torch.zeros(n_docs)
    owners = np.asarray(owner_of_grid, dtype=np.int64)
    for start in progress_bar(range(0, n_docs, batch_size), desc=desc, unit="batch"):
        chunk = texts[start : start + batch_size]
        has_text = torch.tensor([len(t) > 0 for t in chunk])
        ids, valid = pad_texts(chunk, encoder.shape.max_text_tokens)
        valid[~has_text, 0] = True  # an empty text embeds as one pad token, then counts for nothing
        emb = encoder.embed_text(ids.to(device), valid.to(device)).float().cpu()
        total[start : start + len(chunk)] += emb * has_text.unsqueeze(1)
        parts[start : start + len(chunk)] += has_text.float()
        # the images of this batch's documents, so a batch's content never depends on where a slice starts
        lo, hi = np.searchsorted(owners, [start, start + batch_size])
        for g in range(lo, hi, batch_size):
            stop = min(g + batch_size, hi)
            codes = torch.from_numpy(np.stack(grids[g:stop]))
            mask = torch.from_numpy(np.stack(grid_valid[g:stop])).to(device) if query_dropout else None
            emb = encoder.embed_image(codes.to(device), mask).float().cpu()
            who = torch.from_numpy(owners[g:stop])
            total.index_add_(0, who, emb)
            parts.index_add_(0, who, torch.ones(len(who)))
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
