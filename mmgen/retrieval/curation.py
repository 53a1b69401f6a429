"""Curation with the retriever's embeddings: the seeds' three uses of a dual encoder.

- ``alignment_filter``: drop image–text pairs the embedder finds poorly aligned
  (CLIP-score filtering);
- ``balance_by_cluster``: FAISS k-means over image embeddings, at most ``cap``
  documents per cluster, so frequent kinds of image do not dominate;
- ``assign_images_to_sentences``: place each image next to its best-matching
  sentence, each sentence taking at most one image (MMC4's assignment).
"""

from __future__ import annotations

from typing import Sequence

import faiss
import numpy as np
from PIL import Image

from mmgen.retrieval.embedder import Embedder


def alignment_scores(embedder: Embedder, images: Sequence[Image.Image], texts: Sequence[str]) -> np.ndarray:
    """Cosine similarity of each image with its own text."""
    return np.sum(embedder.embed_images(images) * embedder.embed_texts(texts), axis=1)


def alignment_filter(embedder: Embedder, images: Sequence[Image.Image], texts: Sequence[str], threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(keep mask, scores): keep pairs whose similarity is at least ``threshold``."""
    scores = alignment_scores(embedder, images, texts)
    return scores >= threshold, scores


def balance_by_cluster(embeddings: np.ndarray, *, clusters: int, cap: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(keep mask, cluster of each row): k-means with FAISS, then the first ``cap`` rows of each cluster in a seeded order."""
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
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
