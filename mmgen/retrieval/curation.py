"""Curation with a dual encoder's embeddings: the steps of ``data/curate.py`` that need one.

- ``alignment_scores`` + ``keep_by_score``: CLIP-score filtering, by a threshold or keeping the best-scored
  fraction (DataComp's form);
- ``repeats_earlier``: near-duplicate images (an embedding almost equal to an earlier kept one);
- ``balance_by_cluster``: FAISS k-means over image embeddings, at most ``cap`` documents per cluster, so
  frequent kinds of image do not dominate;
- ``assign_images_to_sentences``: place each image next to its best-matching sentence, each sentence taking
  at most one image (MMC4's assignment).
"""

from __future__ import annotations

from typing import Sequence

import faiss
import numpy as np
from PIL import Image

from mmgen.retrieval.embedder import Embedder


def alignment_scores(image_embeddings: np.ndarray, text_embeddings: np.ndarray) -> np.ndarray:
    """Cosine similarity of each image with its own text (rows are unit vectors)."""
    return np.sum(image_embeddings * text_embeddings, axis=1)


def score_threshold(scores: np.ndarray, *, threshold: float | None = None, keep_fraction: float | None = None) -> float:
    """The score a pair needs: ``threshold`` itself, or the one that keeps the best ``keep_fraction`` of ``scores``."""
    if threshold is not None:
        return float(threshold)
    if keep_fraction is None or not 0 < keep_fraction <= 1:
        raise ValueError("give a threshold or a keep_fraction in (0, 1]")
    if len(scores) == 0:
        return -np.inf
    keep = max(1, int(round(keep_fraction * len(scores))))
    return float(np.sort(scores)[::-1][keep - 1])


def repeats_earlier(embeddings: np.ndarray, similarity: float) -> np.ndarray:
    """Mask of rows whose cosine with an earlier row that is not itself a repeat is at least ``similarity``."""
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    repeat = np.zeros(len(x), dtype=bool)
    index = faiss.IndexFlatIP(x.shape[1]) if len(x) else None
    for i in range(len(x)):
        if index.ntotal:
            best, _ = index.search(x[i : i + 1], 1)
            if best[0, 0] >= similarity:
                repeat[i] = True
                continue
        index.add(x[i : i + 1])
    return repeat


def balance_by_cluster(embeddings: np.ndarray, *, clusters: int, cap: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(keep mask, cluster of each row): k-means with FAISS, then the first ``cap`` rows of each cluster in a seeded order."""
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    clusters = max(1, min(clusters, len(x)))
    kmeans = faiss.Kmeans(x.shape[1], clusters, niter=20, seed=seed, spherical=True, verbose=False)
    kmeans.train(x)
    _, assignment = kmeans.index.search(x, 1)
    assignment = assignment[:, 0]
    keep = np.zeros(len(x), dtype=bool)
    taken = np.zeros(clusters, dtype=np.int64)
    for i in np.random.default_rng(seed).permutation(len(x)):
        if taken[assignment[i]] < cap:
            keep[i] = True
            taken[assignment[i]] += 1
    return keep, assignment


def assign_images_to_sentences(embedder: Embedder, sentences: Sequence[str], images: Sequence[Image.Image]) -> np.ndarray:
    """Sentence index for each image: greedy on similarity, highest first, one image per sentence while sentences last."""
    if not images:
        return np.zeros(0, dtype=np.int64)
    sim = embedder.embed_images(images) @ embedder.embed_texts(sentences).T
    out = np.full(len(images), -1, dtype=np.int64)
    free = np.ones(len(sentences), dtype=bool)
    for flat in np.argsort(-sim, axis=None):
        image, sentence = divmod(int(flat), len(sentences))
        if out[image] >= 0 or (not free[sentence] and free.any()):
            continue
        out[image] = sentence
        free[sentence] = False
        if (out >= 0).all():
            break
    return out
