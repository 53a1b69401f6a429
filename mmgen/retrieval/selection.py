"""CM3leon's choice of retrieved documents for each training document.

The hybrid retriever's named documents (name_lookup.py: the bank-corpus documents the query names) come
first, under the absolute rules alone: what a query names is never a near-duplicate to avoid, it is the
knowledge asked for. Then, from the bank's nearest candidates, keep a candidate only if it
- is not the query itself nor an exact duplicate of it (same token content),
- holds both text and an image,
- is not too similar to the query (a near-duplicate teaches nothing), and
- is not too similar to a neighbour already chosen (diversity),
until ``k`` are chosen. Rows with fewer than ``k`` survivors are padded with -1.

The first two rules are absolute. The near-duplicate and diversity tests
compare the documents themselves — the query's clean embedding, not the
query-dropped one that ranked the candidates, since dropout moves a query
about as far as rewording a few of its tokens — and, given the bank's mean
embedding as ``centre``, measure cosine around it: a weakly trained encoder
packs every document into a narrow cone where any two are above a fixed
threshold, while copies still stand out from the rest once the shared
direction is taken away.
"""

from __future__ import annotations

import hashlib

import numpy as np

from mmgen.progress import progress_bar
from mmgen.retrieval.memory_bank import MemoryBank


def select_neighbours(
    bank: MemoryBank,
    queries: np.ndarray,
    query_ids: np.ndarray,
    *,
    embeddings: np.ndarray,
    content_hashes: np.ndarray,
    multimodal: np.ndarray,
    query_hashes: np.ndarray,
    k: int = 2,
    candidates: int = 32,
    max_similarity: float = 0.95,
    clean_queries: np.ndarray | None = None,
    centre: np.ndarray | None = None,
    named: np.ndarray | None = None,
) -> np.ndarray:
    """Neighbour document ids [Q, k] (-1 where none qualified).

    ``embeddings``, ``content_hashes`` and ``multimodal`` are indexed by document id
    (the bank's ids); ``queries`` are the (possibly query-dropped) query embeddings
    that rank the candidates, ``clean_queries`` the queries' own embeddings for the
    near-duplicate test (default: ``queries``), ``query_ids`` their ids in the bank
    (-2 for queries from outside it) and ``query_hashes`` their content hashes.
    ``centre`` (the bank's mean embedding) makes the similarity tests centred.
    ``named`` [Q, m] are the bank ids each query names (-1 padded), taken before the dense candidates.
    """
    _, ids = bank.search(queries, candidates + 1)
    around = centred(embeddings, centre)
    clean = centred(queries if clean_queries is None else clean_queries, centre)
    sims = np.empty(ids.shape, dtype=np.float32)
    for start in range(0, len(ids), 4096):  # in blocks: [Q, candidates, D] at once would not fit for large splits
        rows = slice(start, start + 4096)
        sims[rows] = np.einsum("qd,qkd->qk", clean[rows], around[np.clip(ids[rows], 0, None)])
    return choose_neighbours(sims, ids, query_ids, embeddings=around, content_hashes=content_hashes,
                             multimodal=multimodal, query_hashes=query_hashes, k=k, max_similarity=max_similarity,
                             named=named)  # fmt: skip


def centred(vectors: np.ndarray, centre: np.ndarray | None) -> np.ndarray:
    """Unit vectors of ``vectors - centre`` (``vectors`` themselves when there is no centre)."""
    if centre is None:
        return vectors
    shifted = np.asarray(vectors, dtype=np.float32) - centre
    return shifted / np.maximum(np.linalg.norm(shifted, axis=-1, keepdims=True), 1e-12)


def choose_neighbours(
    sims: np.ndarray,
    ids: np.ndarray,
    query_ids: np.ndarray,
    *,
    embeddings: np.ndarray,
    content_hashes: np.ndarray,
    multimodal: np.ndarray,
    query_hashes: np.ndarray,
    k: int = 2,
    max_similarity: float = 0.95,
    named: np.ndarray | None = None,
) -> np.ndarray:
    """The filtering half of ``select_neighbours`` over candidates ``ids`` [Q, C] (best first).

    ``sims`` [Q, C] are the similarities the near-duplicate test reads; candidate
    ids index ``embeddings`` (the vectors of the diversity test), ``content_hashes``
    and ``multimodal``. ``named`` [Q, m] (bank ids, -1 padded) come first, tested by the absolute rules only.
    """
    out = np.full((len(ids), k), -1, dtype=np.int64)
    for q, (row_sims, row_ids) in enumerate(progress_bar(zip(sims, ids), desc="choose neighbours", total=len(ids),
                                                         unit="document")):
        me = query_ids[q]

        def allowed(cand) -> bool:
            return not (cand < 0 or cand == me or cand in chosen or content_hashes[cand] == query_hashes[q]
                        or not multimodal[cand])  # fmt: skip

        chosen: list[int] = []
        for cand in () if named is None else named[q]:
            if len(chosen) < k and allowed(cand):
                chosen.append(int(cand))
        for sim, cand in zip(row_sims, row_ids):
            if len(chosen) == k:
                break
            if not allowed(cand):
                continue
            if sim > max_similarity:
                continue
            if chosen and float(np.max(embeddings[chosen] @ embeddings[cand])) > max_similarity:
                continue
            chosen.append(int(cand))
        out[q, : len(chosen)] = chosen
    return out


def content_hash(ids: np.ndarray) -> int:
    """A 64-bit hash of a token sequence, for exact-duplicate checks."""
    return int.from_bytes(hashlib.blake2b(np.asarray(ids, dtype=np.int64).tobytes(), digest_size=8).digest(), "little", signed=True)
