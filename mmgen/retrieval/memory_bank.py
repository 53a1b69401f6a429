"""The FAISS memory bank: unit document embeddings searched by inner product.

``flat`` is exact and right for banks up to a few hundred thousand documents;
``ivfpq`` (inverted lists + product quantisation, re-ranked exactly) and ``hnsw`` (graph) trade a
little recall for speed and memory on large banks. The index is persisted
through fsspec as FAISS's own serialisation, with the row → document id map
and the mean vector (the centre near-duplicate tests measure around, see
selection.py) beside it; a GPU copy is used for search when faiss-gpu and a
GPU are present.
"""

from __future__ import annotations

import io
import json
import posixpath
from dataclasses import dataclass

import faiss
import fsspec
import numpy as np

from mmgen.files import write_atomic


@dataclass
class IndexSpec:
    kind: str = "flat"
    """'flat' (exact), 'ivfpq' or 'hnsw'."""
    nlist: int = 1024
    """IVF lists (ivfpq)."""
    pq_m: int = 32
    """Sub-quantisers of PQ (ivfpq); must divide the embedding dimension."""
    nprobe: int = 64
    """Lists visited per query (ivfpq)."""
    refine_factor: int = 8
    """ivfpq: re-rank this many times k PQ candidates with exact distances (0: off; costs the raw vectors' memory)."""
    hnsw_m: int = 32
    """Graph degree (hnsw)."""
    ef_search: int = 128
    """Search breadth (hnsw)."""


def build_index(vectors: np.ndarray, spec: IndexSpec) -> faiss.Index:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    dim = vectors.shape[1]
    if spec.kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif spec.kind == "ivfpq":
        nlist = max(1, min(spec.nlist, len(vectors) // 39))  # FAISS wants ~39 training points per list
        index = faiss.IndexIVFPQ(faiss.IndexFlatIP(dim), dim, nlist, spec.pq_m, 8, faiss.METRIC_INNER_PRODUCT)
        index.train(vectors)
        index.nprobe = spec.nprobe
        if spec.refine_factor:
            index = faiss.IndexRefineFlat(index)
            index.k_factor = spec.refine_factor
    elif spec.kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, spec.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = spec.ef_search
    else:
        raise ValueError(f"unknown index kind {spec.kind!r} (use flat, ivfpq or hnsw)")
    index.add(vectors)
    return index


def _maybe_gpu(index: faiss.Index) -> faiss.Index:
    if hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
        return faiss.index_cpu_to_all_gpus(index)
    return index


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


class MemoryBank:
    """An index plus the document id of each of its rows (and the mean vector, when known)."""

    def __init__(self, index: faiss.Index, doc_ids: np.ndarray, spec: IndexSpec, centre: np.ndarray | None = None):
        if index.ntotal != len(doc_ids):
            raise ValueError(f"index holds {index.ntotal} vectors but {len(doc_ids)} document ids")
        self.index = index
        self.doc_ids = np.asarray(doc_ids, dtype=np.int64)
        self.spec = spec
        self.centre = None if centre is None else np.asarray(centre, dtype=np.float32)
        self.names = None
        """The hybrid retriever's name lookup (name_lookup.py), when query.load_retriever found one beside the index."""
        self._search_index = _maybe_gpu(index)

    @classmethod
    def build(cls, vectors: np.ndarray, doc_ids: np.ndarray | None = None, spec: IndexSpec | None = None) -> "MemoryBank":
        spec = spec or IndexSpec()
        ids = np.arange(len(vectors)) if doc_ids is None else doc_ids
        centre = np.asarray(vectors, dtype=np.float64).mean(0).astype(np.float32) if len(vectors) else None
        return cls(build_index(vectors, spec), ids, spec, centre)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(similarities [Q, k], document ids [Q, k]); missing results have id -1."""
        sims, rows = self._search_index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        ids = np.where(rows >= 0, self.doc_ids[np.clip(rows, 0, None)], -1)
        return sims, ids

    def save(self, folder: str) -> None:
        fs, root = fsspec.core.url_to_fs(folder)
        fs.makedirs(root, exist_ok=True)
        files = {
            "index.faiss": faiss.serialize_index(self.index).tobytes(),
            "doc_ids.npy": _npy(self.doc_ids),
            "index.json": json.dumps(vars(self.spec)).encode(),
        }
        if self.centre is not None:
            files["centre.npy"] = _npy(self.centre)
        for name, data in files.items():
            write_atomic(posixpath.join(root, name), data, fs)

    @classmethod
    def load(cls, folder: str) -> "MemoryBank":
        fs, root = fsspec.core.url_to_fs(folder)
        if not fs.exists(posixpath.join(root, "index.faiss")):
            raise FileNotFoundError(f"missing input {folder}/index.faiss (run retrieval/build_index.py first)")
        with fs.open(posixpath.join(root, "index.faiss"), "rb") as f:
            index = faiss.deserialize_index(np.frombuffer(f.read(), dtype=np.uint8))
        with fs.open(posixpath.join(root, "doc_ids.npy"), "rb") as f:
            doc_ids = np.load(io.BytesIO(f.read()), allow_pickle=False)
        with fs.open(posixpath.join(root, "index.json"), "r") as f:
            spec = IndexSpec(**json.load(f))
        centre = None
        if fs.exists(posixpath.join(root, "centre.npy")):  # banks built before it was stored have none
            with fs.open(posixpath.join(root, "centre.npy"), "rb") as f:
                centre = np.load(io.BytesIO(f.read()), allow_pickle=False)
        # search-time knobs are not part of FAISS's serialisation
        if spec.kind == "ivfpq":
            faiss.extract_index_ivf(index).nprobe = spec.nprobe
            if spec.refine_factor:
                index.k_factor = spec.refine_factor
        elif spec.kind == "hnsw":
            index.hnsw.efSearch = spec.ef_search
        return cls(index, doc_ids, spec, centre)
