"""Memory edits: change what a trained model knows by changing its memory bank, without retraining.

The bank corpus (``corpus/bank/``, OBELICS parquet) is the part of the memory bank that training never
reads directly. ``edit_bank`` adds documents to it (any corpus ``open_corpus`` reads) and entity
definitions (``{"name", "parts", "layout"}`` records, drawn with the shapes world's renderer): a definition
whose name the bank already defines replaces that definition; a new name adds an entity. The run's
``corpus/entities.json`` follows, so the evaluation scores the edited look and the added entity.
``encode_bank`` re-encodes the bank corpus into ``tokens/bank/``; retrieval/build_index.py (or
retrieval/edit_bank.py, which runs all three) then re-indexes, and sampling with ``sample.retrieve``
conditions on the new definitions.
"""

from __future__ import annotations

import json
import posixpath
from typing import Any

import fsspec
import pyarrow.parquet as pq

from mmgen.config.paths import RunPaths
from mmgen.config.schema import ExperimentConfig
from mmgen.data.corpus import open_corpus
from mmgen.data.entities import check_entity, definition_rows, describe_look, evaluation_items, read_entities
from mmgen.data.obelics import CorpusError
from mmgen.data.shapes_world import OBELICS_SCHEMA, png_bytes, write_parquet_shard
from mmgen.files import write_atomic
from mmgen.fingerprints import tokenizer_fingerprints
from mmgen.tokenizers.pretokenize import Target, encode_job, finalize, plan_jobs
from mmgen.tokenizers.vocab import MultimodalTokenizer


def _shard_paths(paths: RunPaths) -> tuple[fsspec.AbstractFileSystem, list[str]]:
    fs, root = fsspec.core.url_to_fs(paths.corpus_split("bank"))
    return fs, sorted(fs.glob(posixpath.join(root, "shard-*.parquet")))


def has_bank_corpus_files(paths: RunPaths) -> bool:
    """Whether the run has a bank corpus to encode (``corpus/bank/shard-*.parquet``)."""
    return bool(_shard_paths(paths)[1])


def bank_target(cfg: ExperimentConfig, paths: RunPaths, image_size: int) -> Target | None:
    """Encode's target for the bank corpus (``tokens/bank``), or None when the run has none."""
    if not has_bank_corpus_files(paths):
        return None
    corpus = open_corpus(paths.corpus_split("bank"), "obelics", options=cfg.data, image_size=image_size)
    return Target(split="bank", corpus=corpus, folder=paths.tokens("bank"))


def remove_bank_tokens(paths: RunPaths) -> None:
    """Drop ``tokens/bank`` (a bank corpus that is gone, or one about to be encoded afresh)."""
    fs, root = fsspec.core.url_to_fs(paths.tokens("bank"))
    try:
        fs.rm(root, recursive=True)
    except FileNotFoundError:  # nothing to drop, or another encode rank dropped it first
        pass


def encode_bank(cfg: ExperimentConfig, paths: RunPaths, tokenizer: MultimodalTokenizer) -> dict:
    """Encode the whole bank corpus afresh into ``tokens/bank`` (it is small); returns encode's summary."""
    remove_bank_tokens(paths)
    target = bank_target(cfg, paths, tokenizer.image_tok.image_size)
    if target is None:
        raise FileNotFoundError(f"no bank corpus at {paths.corpus_split('bank')} to encode")
    for job in plan_jobs([target]):
        encode_job(job, tokenizer, tokens_per_shard=cfg.data.tokens_per_shard, image_batch_size=cfg.data.encode_batch_size)
    inputs = tokenizer_fingerprints(paths, tokenizer.vocab)
    return finalize([target], vocab_size=tokenizer.vocab.size, dedup=False, inputs=inputs)["bank"]


def read_definitions(url: str) -> list[dict]:
    """Entity definitions, one JSON record a line; a ``CorpusError`` naming the file and line of a bad one."""
    fs, local = fsspec.core.url_to_fs(url)
    if not fs.exists(local):
        raise FileNotFoundError(f"missing entity definitions {url}")
    definitions = []
    with fs.open(local, "r") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise ValueError("a definition is a JSON object")
                entity = {"name": record.get("name"), "parts": record.get("parts"), "layout": record.get("layout")}
                check_entity(entity)
            except ValueError as err:  # json's errors are ValueErrors too
                raise CorpusError(f"{url} line {number}: {err}") from None
            definitions.append(entity)
    if not definitions:
        raise CorpusError(f"{url} holds no entity definition")
    return definitions


def _document_rows(url: str, cfg: ExperimentConfig) -> list[dict[str, Any]]:
    """Every readable document of a corpus as an OBELICS row of the bank (bad records skipped and counted)."""
    rows = []
    for doc in open_corpus(url, cfg.data.corpus_kind, options=cfg.data):
        images = iter(doc.image_metadata)
        rows.append({
            "texts": [p if isinstance(p, str) else None for p in doc.parts],
            "images": [None if isinstance(p, str) else png_bytes(p) for p in doc.parts],
            "metadata": json.dumps([None if isinstance(p, str) else next(images, None) for p in doc.parts]),
            "general_metadata": json.dumps({"url": f"{doc.metadata.get('source')}#{doc.metadata.get('row')}",
                                            "split": "bank", "added": True}),
        })  # fmt: skip
    return rows


def _read_rows(paths: RunPaths) -> list[dict[str, Any]]:
    fs, shards = _shard_paths(paths)
    rows = []
    for shard in shards:
        with fs.open(shard, "rb") as f:
            rows += pq.read_table(f, schema=OBELICS_SCHEMA).to_pylist()
    return rows


def _entity_of(row: dict[str, Any]) -> str | None:
    return json.loads(row.get("general_metadata") or "{}").get("entity")


def edit_bank(cfg: ExperimentConfig, paths: RunPaths, *, definitions: list[dict], documents_url: str = "") -> dict:
    """Add or replace entity definitions and add documents in the bank corpus; update ``entities.json``.

    The corpus is rewritten as one shard under a temporary name and renamed, then the older shards go.
    Returns what changed: ``replaced`` and ``added`` entity names, ``documents_added``, ``bank_documents``.
    """
    image_size = cfg.world.image_size
    fs, old_shards = _shard_paths(paths)
    rows = _read_rows(paths)
    names = {d["name"] for d in definitions}
    if len(names) != len(definitions):
        raise CorpusError("the entity definitions name an entity more than once")
    defined = {_entity_of(r) for r in rows} - {None}
    rows = [r for r in rows if _entity_of(r) not in names]
    added_documents = _document_rows(documents_url, cfg) if documents_url else []
    rows += definition_rows(definitions, image_size) + added_documents  # drawn by the world's renderer
    target = posixpath.join(paths.corpus_split("bank"), "shard-00000.parquet")
    write_parquet_shard(rows, target)
    for shard in old_shards:
        if posixpath.basename(shard) != "shard-00000.parquet":
            fs.rm(shard)
    replaced = sorted(names & defined)
    if definitions:
        _update_entities(paths, definitions, defined, image_size)
    return {"replaced": replaced, "added": sorted(names - defined), "documents_added": len(added_documents),
            "bank_documents": len(rows)}  # fmt: skip


def _update_entities(paths: RunPaths, definitions: list[dict], defined: set[str], image_size: int) -> None:
    """Record edited looks and added entities (no training uses: tail) with their evaluation items, whose group
    is the edit ('replaced', 'added'): the knowledge evaluation scores them apart from head and tail."""
    fs, local = fsspec.core.url_to_fs(paths.entities)
    record = read_entities(paths.entities) if fs.exists(local) else {"entities": [], "items": {}}
    by_name = {e["name"]: e for e in record["entities"]}
    for d in definitions:
        entity = by_name.get(d["name"])
        if entity is None:
            entity = {"name": d["name"], "rank": None, "train_uses": 0, "group": "tail"}
            record["entities"].append(entity)
        entity.update(parts=d["parts"], layout=d["layout"], look=describe_look(d),
                      edit="replaced" if d["name"] in defined else "added")  # fmt: skip
        by_name[d["name"]] = entity
    edited = [by_name[d["name"]] for d in definitions]
    for split in ("heldout", "validation"):
        kept = [i for i in record["items"].get(split, []) if i["entity"] not in {e["name"] for e in edited}]
        fresh = [{**i, "group": by_name[i["entity"]]["edit"]} for i in evaluation_items(edited, split, image_size=image_size)]
        record["items"][split] = kept + fresh
    write_atomic(paths.entities, json.dumps(record, indent=1))

