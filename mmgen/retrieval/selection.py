"""CM3leon's choice of retrieved documents for each training document.

From the bank's nearest candidates, keep a candidate only if it
- is not the query itself nor an exact duplicate of it (same token content),
- holds both text and an image,
- is not too similar to the query (a near-duplicate teaches nothing), and
- is not too similar to a neighbour already chosen (diversity),
until ``k`` are chosen. Rows with fewer than ``k`` survivors are padded with -1.
"""

from __future__ import annotations

import hashlib

import numpy as np

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
) -> np.ndarray:
    """Neighbour document ids [Q, k] (-1 where none qualified).

    ``embeddings``, ``content_hashes`` and ``multimodal`` are indexed by document id
    (the bank's ids); ``queries`` are the (possibly query-dropped) query embeddings,
    ``query_ids`` their ids in the bank (-2 for queries from outside it) and
    ``query_hashes`` their content hashes.
    """
    sims, ids = bank.search(queries, candidates + 1)
    out = np.full((len(queries), k), -1, dtype=np.int64)
    for q, (row_sims, row_ids) in enumerate(zip(sims, ids)):
        me = query_ids[q]
        chosen: list[int] = []
        for sim, cand in zip(row_sims, row_ids):
            if cand < 0 or cand == me or content_hashes[cand] == query_hashes[q] or not multimodal[cand]:
                continue
            if sim > max_similarity:
                continue
            if chosen and float(np.max(embeddings[chosen] @ embeddings[cand])) > max_similarity:
                continue
            chosen.append(int(cand))
            if len(chosen) == k:
                break
        out[q, : len(chosen)] = chosen
    return out


def content_hash(ids: np.ndarray) -> int:
    """A 64-bit hash of a token sequence, for exact-duplicate checks."""
    return int.from_bytes(hashlib.blake2b(np.asarray(ids, dtype=np.int64).tobytes(), digest_size=8).digest(), "little", signed=True)
