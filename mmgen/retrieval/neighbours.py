"""Offline neighbour tables: the training loop reads them and never queries FAISS.

``build_bank_and_neighbours`` embeds every document of the training token
shards (the memory bank), then picks neighbours for the documents of each
split from that bank; under torchrun each rank embeds a slice and rank 0
does the rest. A table is an int64 array [documents, k] (-1 where no candidate
qualified), saved under ``retrieval/neighbours/<split>.npy`` with, beside it, the fingerprint of the
tokens it was built on: the loader refuses a table built on other tokens. Under ``retrieval.retriever``
'hybrid', a bank with a bank corpus also gets its name lookup (name_lookup.py), saved beside the index, and
each document's neighbours start with the bank-corpus documents it names.
"""

from __future__ import annotations

import io
import json
import posixpath
from typing import Any, Callable

import fsspec
import numpy as np

from mmgen.config.paths import StaleInputError
from mmgen.config.schema import RetrievalConfig
from mmgen.data.token_shards import TokenShards
from mmgen.files import reading, write_atomic
from mmgen.retrieval.bank_documents import BankDocuments
from mmgen.retrieval.documents import embed_documents, has_both_modalities
from mmgen.retrieval.encoder import DualEncoder
from mmgen.retrieval.lexical import document_texts
from mmgen.retrieval.memory_bank import IndexSpec, MemoryBank
from mmgen.retrieval.name_lookup import NameLookup
from mmgen.retrieval.selection import content_hash, select_neighbours


def _info_path(path: str) -> str:
    return path[: -len(".npy")] + ".json"


def save_neighbours(path: str, table: np.ndarray, info: dict, shards: TokenShards) -> None:
    """The table, and beside it ``info`` with the fingerprint of the ``shards`` whose documents it indexes."""
    fs, local = fsspec.core.url_to_fs(path)
    fs.makedirs(posixpath.dirname(local), exist_ok=True)
    buf = io.BytesIO()
    np.save(buf, table.astype(np.int64), allow_pickle=False)
    info = {**info, "tokens": shards.folder, "tokens_fingerprint": shards.fingerprint()}
    # the info goes last: a table whose info is missing or another's is stale, and refused
    for target, data in ((local, buf.getvalue()), (_info_path(local), json.dumps(info, indent=2).encode())):
        write_atomic(target, data, fs)


def load_neighbours(path: str, shards: TokenShards) -> np.ndarray:
    """The neighbour table of ``shards``' documents; ``StaleInputError`` when it was built on other tokens."""
    fs, local = fsspec.core.url_to_fs(path)
    if not fs.exists(local):
        raise FileNotFoundError(f"missing input {path} (run retrieval/build_index.py first)")
    stale = f"rerun retrieval/build_index.py: {path} was built"
    with fs.open(local, "rb") as f, reading(path, "neighbour table"):
        table = np.load(io.BytesIO(f.read()), allow_pickle=False)
    if len(table) != len(shards):
        raise StaleInputError(f"{stale} for {len(table)} documents, {shards.folder} holds {len(shards)}")
    info = {}
    if fs.exists(_info_path(local)):
        with fs.open(_info_path(local), "r") as f, reading(_info_path(path), "neighbour table info"):
            info = json.load(f)
    if not isinstance(info, dict) or info.get("tokens_fingerprint") != shards.fingerprint():
        raise StaleInputError(f"{stale} on other tokens than those now in {shards.folder}")
    return table


Gather = Callable[[Any], "list[Any] | None"]
"""Collects one object from every rank: rank 0 gets them in rank order, the other ranks get None."""


def rank_slice(n: int, batch_size: int, rank: int, world: int) -> range:
    """The contiguous documents rank ``rank`` of ``world`` embeds: whole batches of ``batch_size``.

    Slices start at multiples of the batch size, so every embedding batch holds
    the same documents whatever the number of ranks, and the vectors match a
    single-process run bit for bit.
    """
    batches = -(-n // batch_size)
    lo, hi = batches * rank // world, batches * (rank + 1) // world
    return range(min(lo * batch_size, n), min(hi * batch_size, n))


def _embed_slice(encoder: DualEncoder, shards: TokenShards, vocab, *, rank: int, world: int, gather: Gather,
                 batch_size: int, query_dropout: float = 0.0, seed: int = 0, desc: str = "embed documents"):  # fmt: skip
    """(embeddings, content hashes, has-both-modalities) of every document, on rank 0; None on the others."""
    part = rank_slice(len(shards), batch_size, rank, world)
    docs = [shards[i] for i in part]
    emb = embed_documents(encoder, docs, vocab, batch_size=batch_size, query_dropout=query_dropout, seed=seed,
                          first_index=part.start, desc=desc)  # fmt: skip
    hashes = np.array([content_hash(d) for d in docs], dtype=np.int64)
    pieces = gather((emb, hashes, has_both_modalities(docs, vocab)))
    if pieces is None:
        return None
    return tuple(np.concatenate(column) for column in zip(*pieces))


def build_bank_and_neighbours(
    encoder: DualEncoder,
    vocab,
    bank_shards: TokenShards | BankDocuments,
    query_splits: dict[str, tuple[TokenShards, str]],
    cfg: RetrievalConfig,
    bank_dir: str,
    *,
    log: Callable[[str], None] = print,
    rank: int = 0,
    world: int = 1,
    gather: Gather | None = None,
    text_tokenizer=None,
) -> dict[str, dict]:
    """Build the bank from ``bank_shards`` and write a neighbour table for each ``split: (shards, path)``.

    ``bank_shards`` is a token folder or several read back to back (``BankDocuments``: the training
    shards and the bank corpus); a split that is one of them is excluded from its own neighbours by id.

    With ``world`` > 1 every rank calls this with its ``rank`` and a ``gather``
    (e.g. over torch.distributed): each embeds its slice of every document set
    (the expensive part), rank 0 builds and saves the index, selects the
    neighbours and writes every file; the other ranks return an empty report.
    ``text_tokenizer`` (the run's) reads the documents' words for the hybrid retriever's name lookup.
    """
    if gather is None:
        if world != 1:
            raise ValueError(f"building the bank on {world} ranks needs a gather function")

        def gather(obj):
            return [obj]

    bank_docs = bank_shards if isinstance(bank_shards, BankDocuments) else BankDocuments([bank_shards])
    shard = {"rank": rank, "world": world, "gather": gather, "batch_size": cfg.embed_batch_size}
    gathered = _embed_slice(encoder, bank_shards, vocab, desc="embed bank", **shard)
    # every rank embeds every query split before rank 0 turns to FAISS, so no rank waits on another's search
    queries = {split: _embed_slice(encoder, shards, vocab, query_dropout=cfg.query_dropout, seed=cfg.seed,
                                   desc=f"embed {split} queries", **shard)
               for split, (shards, _) in query_splits.items()}  # fmt: skip
    # the near-duplicate test compares documents as they are: a split outside the bank is embedded once more
    clean = {split: _embed_slice(encoder, shards, vocab, desc=f"embed {split} documents", **shard)
             for split, (shards, _) in query_splits.items()
             if cfg.query_dropout and bank_docs.offset_of(shards) is None}  # fmt: skip
    if gathered is None:
        return {}
    embeddings, hashes, multimodal = gathered
    bank = MemoryBank.build(embeddings, spec=IndexSpec(kind=cfg.index_kind))
    bank.save(bank_dir)
    log(f"memory bank: {len(embeddings)} documents, {multimodal.sum()} with text and image, index {cfg.index_kind} "
        f"-> {bank_dir}" + (f" (embedded on {world} ranks)" if world > 1 else ""))  # fmt: skip
    names = build_name_lookup(bank_docs, cfg, bank_dir, vocab, text_tokenizer)
    if names is not None:
        log(f"name lookup: {names.index.ntotal} bank-corpus documents, {len(names.index.terms)} words -> {bank_dir}/names")
    report = {}
    for split, (shards, path) in query_splits.items():
        query_emb, query_hashes, _ = queries[split]
        n = len(query_emb)
        # a query from another split has no id in the bank; its hash alone rules out its duplicates
        start = bank_docs.offset_of(shards)
        query_ids = start + np.arange(n) if start is not None else np.full(n, -2)
        if start is not None:
            clean_emb = embeddings[start : start + n]
        else:  # without query dropout the queries are clean already
            clean_emb = clean[split][0] if split in clean else query_emb
        table = select_neighbours(
            bank, query_emb, query_ids, embeddings=embeddings, content_hashes=hashes, multimodal=multimodal,
            query_hashes=query_hashes, k=cfg.neighbours, candidates=cfg.candidates, max_similarity=cfg.max_similarity,
            clean_queries=clean_emb, centre=bank.centre if cfg.centred_similarity else None,
            named=None if names is None else names.named_in_documents(shards, vocab, text_tokenizer, cfg.neighbours),
        )
        filled = float((table >= 0).mean()) if table.size else 0.0
        info = {"split": split, "bank": bank_dir, "bank_documents": len(bank_docs), "k": cfg.neighbours, "filled": filled, "query_dropout": cfg.query_dropout,
                "max_similarity": cfg.max_similarity, "centred_similarity": cfg.centred_similarity, "documents": n,
                "retriever": "dense" if names is None else "hybrid"}
        save_neighbours(path, table, info, shards)
        log(f"{split}: neighbours for {n} documents, {filled:.1%} of slots filled -> {path}")
        report[split] = info
    return report


def build_name_lookup(bank_docs: BankDocuments, cfg: RetrievalConfig, bank_dir: str, vocab,
                      text_tokenizer) -> NameLookup | None:  # fmt: skip
    """The hybrid retriever's name lookup over the bank corpus, saved in ``bank_dir``; None (and any old one
    removed) under 'dense' or for a bank of training documents alone, where it would name nothing."""
    NameLookup.remove(bank_dir)
    if cfg.retriever != "hybrid" or len(bank_docs.parts) < 2:
        return None
    if text_tokenizer is None:
        raise ValueError("the hybrid retriever's name lookup needs the run's text tokenizer")
    corpus = BankDocuments(bank_docs.parts[1:])
    names = NameLookup.build(document_texts(corpus, vocab, text_tokenizer), bank_docs.offset_of(bank_docs.parts[1]),
                             name_documents=cfg.name_documents)  # fmt: skip
    names.save(bank_dir)
    return names
