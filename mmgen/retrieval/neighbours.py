"""Offline neighbour tables: the training loop reads them and never queries FAISS.

``build_bank_and_neighbours`` embeds every document of the training token
shards (the memory bank), then picks neighbours for the documents of each
split from that bank. A table is an int64 array [documents, k] (-1 where no
candidate qualified), saved as ``neighbours.npy`` beside the split's shards.
"""

from __future__ import annotations

import io
import json
from typing import Callable

import fsspec
import numpy as np

from mmgen.config.schema import RetrievalConfig
from mmgen.data.token_shards import TokenShards
from mmgen.retrieval.documents import embed_documents, has_both_modalities
from mmgen.retrieval.encoder import DualEncoder
from mmgen.retrieval.memory_bank import IndexSpec, MemoryBank
from mmgen.retrieval.selection import content_hash, select_neighbours


def save_neighbours(path: str, table: np.ndarray, info: dict) -> None:
    fs, local = fsspec.core.url_to_fs(path)
    buf = io.BytesIO()
    np.save(buf, table.astype(np.int64), allow_pickle=False)
    for target, data in ((local, buf.getvalue()), (local[: -len(".npy")] + ".json", json.dumps(info, indent=2).encode())):
        with fs.open(target + ".tmp", "wb") as f:
            f.write(data)
        fs.mv(target + ".tmp", target)


def load_neighbours(path: str, n_documents: int) -> np.ndarray:
    fs, local = fsspec.core.url_to_fs(path)
    if not fs.exists(local):
        raise FileNotFoundError(f"missing input {path} (run retrieval/build_index.py first)")
    with fs.open(local, "rb") as f:
        table = np.load(io.BytesIO(f.read()), allow_pickle=False)
    if len(table) != n_documents:
        raise ValueError(f"{path} lists neighbours of {len(table)} documents, the shards hold {n_documents}; rerun retrieval/build_index.py")
    return table


def build_bank_and_neighbours(
    encoder: DualEncoder,
    vocab,
    bank_shards: TokenShards,
    query_splits: dict[str, tuple[TokenShards, str]],
    cfg: RetrievalConfig,
    bank_dir: str,
    *,
    log: Callable[[str], None] = print,
) -> dict[str, dict]:
    """Build the bank from ``bank_shards`` and write a neighbour table for each ``split: (shards, path)``."""
    bank_docs = list(bank_shards.documents())
    embeddings = embed_documents(encoder, bank_docs, vocab)
    hashes = np.array([content_hash(d) for d in bank_docs], dtype=np.int64)
    multimodal = has_both_modalities(bank_docs, vocab)
    bank = MemoryBank.build(embeddings, spec=IndexSpec(kind=cfg.index_kind))
    bank.save(bank_dir)
    log(f"memory bank: {len(bank_docs)} documents, {multimodal.sum()} with text and image, index {cfg.index_kind} -> {bank_dir}")
    report = {}
    for split, (shards, path) in query_splits.items():
        docs = list(shards.documents())
        queries = embed_documents(encoder, docs, vocab, query_dropout=cfg.query_dropout, seed=cfg.seed)
        query_hashes = np.array([content_hash(d) for d in docs], dtype=np.int64)
        # a query from another split has no id in the bank; its hash alone rules out its duplicates
        is_bank = shards.folder == bank_shards.folder
        query_ids = np.arange(len(docs)) if is_bank else np.full(len(docs), -2)
        table = select_neighbours(
            bank, queries, query_ids, embeddings=embeddings, content_hashes=hashes, multimodal=multimodal,
            query_hashes=query_hashes, k=cfg.neighbours, candidates=cfg.candidates, max_similarity=cfg.max_similarity,
        )
        filled = float((table >= 0).mean()) if table.size else 0.0
        info = {"split": split, "bank": bank_dir, "k": cfg.neighbours, "filled": filled, "query_dropout": cfg.query_dropout,
                "max_similarity": cfg.max_similarity, "documents": len(docs)}
        save_neighbours(path, table, info)
        log(f"{split}: neighbours for {len(docs)} documents, {filled:.1%} of slots filled -> {path}")
        report[split] = info
    return report
