"""Documents → token shards: batched VQ encoding, split across ranks, resumable, deterministic.

The unit of work is one *input shard* of a corpus (``mmgen.data.corpus``). Rank ``r`` of ``n`` encodes
the shards ``r, r + n, …`` of the whole plan (every split and corpus in order); each input shard ``i``
becomes output shards ``shard-<i>-<k>`` plus a ``shard-<i>.done.json`` record (written last, atomically)
holding their entries and what was read and skipped. So:

- a rerun after a kill skips every input shard with a done record and redoes the rest from scratch,
  after deleting whatever a killed run left of them;
- output depends only on the input shard and the config, not on the rank count, order or interruptions:
  each shard gets its own curation scope (dedup) and the same image batches, so a resumed run's files
  are byte-identical to an uninterrupted run's;
- nothing is visible under a final name before it is complete (tmp + rename; the index file last).

Once every input shard is done, ``finalize`` writes each folder's ``manifest.json`` (with cross-shard
duplicates marked) and, for a split with several corpora, the mixture manifest with token weights.
"""

from __future__ import annotations

import itertools
import json
import posixpath
import queue
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

import fsspec

from mmgen.data.corpus import Corpus
from mmgen.data.document import Document
from mmgen.data.reading import SAMPLING_KEY, CorpusError, ReadStats
from mmgen.data.token_shards import TokenShardWriter, write_manifest, write_mixture
from mmgen.files import write_atomic
from mmgen.progress import progress_bar
from mmgen.tokenizers.vocab import MultimodalTokenizer


def _chunks(items: Iterable[Document], size: int) -> Iterator[list[Document]]:
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def pretokenize(
    documents: Iterable[Document],
    tokenizer: MultimodalTokenizer,
    writer: TokenShardWriter,
    *,
    image_batch_size: int = 64,
    log: Callable[[str], None] = print,
    log_every_seconds: float = 10.0,
) -> dict[str, int]:
    """Encode every document into ``writer``; returns counts (documents, tokens, images).

    The images of ``image_batch_size`` documents at a time go through the VQ encoder as one batch.
    """
    counts: Counter[str] = Counter()
    last_log = time.monotonic()
    for chunk in _chunks(documents, image_batch_size):
        for doc, ids in zip(chunk, tokenizer.encode_documents(chunk)):
            meta = {"source": doc.metadata.get("source"), "row": doc.metadata.get("row"), "images": doc.image_metadata,
                    **({SAMPLING_KEY: doc.metadata[SAMPLING_KEY]} if SAMPLING_KEY in doc.metadata else {})}
            writer.add(ids, meta, content_hash=int(doc.metadata.get("content_hash", 0)))
            counts["documents"] += 1
            counts["tokens"] += len(ids)
            counts["images"] += len(doc.images)
        if time.monotonic() - last_log > log_every_seconds:
            log(f"  {counts['documents']} documents, {counts['tokens']} tokens")
            last_log = time.monotonic()
    return dict(counts)


def prefetch(items: Iterable, depth: int = 2) -> Iterator:
    """``items`` in order, produced by a background thread up to ``depth`` ahead: reading and decoding
    the next chunk (I/O, zlib and JPEG decoders release the GIL) overlaps the VQ encoding of this one."""
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    end = object()
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                buffer.put((item, None))
        except BaseException as err:  # noqa: BLE001 - re-raised in the consumer, e.g. a CorpusError
            buffer.put((end, err))
            return
        buffer.put((end, None))

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    try:
        while True:
            item, err = buffer.get()
            if err is not None:
                raise err
            if item is end:
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full buffer
            try:
                buffer.get(timeout=0.05)
            except queue.Empty:
                pass


@dataclass
class Target:
    """One corpus of one split and the folder its token shards go to."""

    split: str
    corpus: Corpus
    folder: str
    weight: float | None = None
    """Share of training tokens in a mixture; None: in proportion to its tokens."""


@dataclass
class Job:
    target: Target
    shard: int

    @property
    def prefix(self) -> str:
        return f"shard-{self.shard:05d}"

    @property
    def done_path(self) -> str:
        return posixpath.join(self.target.folder, f"{self.prefix}.done.json")


def plan_jobs(targets: Sequence[Target]) -> list[Job]:
    return [Job(t, i) for t in targets for i in range(len(t.corpus.shards))]


class Progress:
    """Encode's bar (``mmgen.progress``): input shards done of this rank's, with documents and tokens per second."""

    def __init__(self, total_shards: int, *, prefix: str = ""):
        self.bar = progress_bar(desc=f"{prefix}encode", total=total_shards, unit="shard")
        self.documents = self.tokens = 0

    def add(self, documents: int = 0, tokens: int = 0, shards: int = 0) -> None:
        self.documents += documents
        self.tokens += tokens
        if documents or tokens:
            elapsed = max(self.bar.format_dict["elapsed"], 1e-9)
            self.bar.set_postfix_str(f"{self.documents / elapsed:,.0f} documents/s, {self.tokens / elapsed:,.0f} tokens/s",
                                     refresh=False)  # fmt: skip
        self.bar.update(shards)

    def close(self) -> None:
        self.bar.close()


def encode_job(job: Job, tokenizer: MultimodalTokenizer, *, tokens_per_shard: int, image_batch_size: int,
               progress: Progress | None = None, fingerprint: int = 0) -> dict:  # fmt: skip
    """Encode one input shard unless a done record with the same ``fingerprint`` (tokenizers and reading
    policy) exists; returns the done record (``resumed`` is True when it was already there)."""
    fs, root = fsspec.core.url_to_fs(job.target.folder)
    done_path = fsspec.core.url_to_fs(job.done_path)[1]
    if fs.exists(done_path):
        with fs.open(done_path, "r") as f:
            record = json.load(f)
        if record.get("fingerprint") == fingerprint and record.get("source") == job.target.corpus.shards[job.shard]:
            if progress is not None:
                progress.add(shards=1)
            return {**record, "resumed": True}
        fs.rm(done_path)
    fs.makedirs(root, exist_ok=True)
    for leftover in fs.glob(posixpath.join(root, f"{job.prefix}-*")):  # what a killed run left of this shard
        fs.rm(leftover)
    corpus = job.target.corpus
    writer = TokenShardWriter(job.target.folder, vocab_size=tokenizer.vocab.size, tokens_per_shard=tokens_per_shard,
                              name_prefix=job.prefix, vocab=tokenizer.vocab, sources=corpus.shards)  # fmt: skip
    stats = ReadStats()
    counts: Counter[str] = Counter()
    for chunk in prefetch(_chunks(corpus.read_shard(job.shard, stats=stats), image_batch_size)):
        n = pretokenize(chunk, tokenizer, writer, image_batch_size=image_batch_size, log=lambda _: None)
        counts.update(n)
        if progress is not None:
            progress.add(n.get("documents", 0), n.get("tokens", 0))
    record = {"source": corpus.shards[job.shard], "shards": writer.finish(), "stats": stats.to_dict(),
              "fingerprint": fingerprint,
              "documents": counts["documents"], "tokens": counts["tokens"], "images": counts["images"]}  # fmt: skip
    write_atomic(done_path, json.dumps(record, indent=1, sort_keys=True).encode(), fs)
    if progress is not None:
        progress.add(shards=1)
    return record


def finalize(targets: Sequence[Target], *, vocab_size: int, dedup: bool, inputs: dict[str, str] | None = None) -> dict[str, dict]:
    """Write every folder's manifest (and mixture manifests); returns a summary per split.

    ``inputs``: the fingerprints of the tokenizers the shards were encoded with (``mmgen.fingerprints``).
    """
    summaries: dict[str, dict] = {}
    by_split: dict[str, list[Target]] = {}
    for t in targets:
        by_split.setdefault(t.split, []).append(t)
    for split, split_targets in by_split.items():
        manifests = []
        for t in split_targets:
            records = []
            for job in plan_jobs([t]):
                with fsspec.open(job.done_path, "r") as f:
                    records.append(json.load(f))
            stats = ReadStats(max_examples=10)
            for r in records:
                stats.merge(ReadStats.from_dict(r["stats"]))
            extra = {"source": t.corpus.url, "kind": t.corpus.kind, "documents_in": stats.records_in,
                     "images": sum(r["images"] for r in records),
                     "skipped": dict(sorted(stats.skipped.items())),
                     "images_dropped": dict(sorted(stats.images_dropped.items())), "text_only": stats.text_only,
                     "skipped_examples": [list(e) for e in stats.examples]}  # fmt: skip
            if inputs:
                extra["inputs"] = inputs
            shards = [s for r in records for s in r["shards"]]
            manifests.append(write_manifest(t.folder, shards, vocab_size=vocab_size, sources=t.corpus.shards,
                                            extra=extra, dedup=dedup))  # fmt: skip
        summary = _summary(manifests)
        if len(split_targets) > 1:
            weights = [t.weight if t.weight is not None else float(m["tokens"]) for t, m in zip(split_targets, manifests)]
            total = sum(weights) or 1.0
            root = posixpath.dirname(split_targets[0].folder.rstrip("/"))
            components = [{"folder": posixpath.basename(t.folder.rstrip("/")), "weight": w / total,
                           "source": t.corpus.url, "kind": t.corpus.kind}
                          for t, w in zip(split_targets, weights)]  # fmt: skip
            write_mixture(root, components, extra={**summary, **({"inputs": inputs} if inputs else {})})
            summary["weights"] = [c["weight"] for c in components]
        summaries[split] = summary
    return summaries


def _summary(manifests: list[dict]) -> dict:
    skipped: Counter[str] = Counter()
    dropped: Counter[str] = Counter()
    for m in manifests:
        skipped.update(m["skipped"])
        dropped.update(m["images_dropped"])
    return {
        "documents_in": sum(m["documents_in"] for m in manifests),
        "documents_out": sum(m["documents"] for m in manifests) - sum(m.get("duplicates", 0) for m in manifests),
        "tokens": sum(m["tokens"] for m in manifests),
        "images": sum(m["images"] for m in manifests),
        "skipped": dict(sorted(skipped.items())),
        "cross_shard_duplicates": sum(m.get("duplicates", 0) for m in manifests),
        "images_dropped": dict(sorted(dropped.items())),
        "text_only": sum(m.get("text_only", 0) for m in manifests),
        "skipped_examples": [e for m in manifests for e in m["skipped_examples"]][:5],  # [source, row, reason]
    }


def require_documents(summaries: dict[str, dict]) -> None:
    """A split that encoded to nothing is an error naming why, not a success that training trips over later."""
    for split, s in summaries.items():
        if s["documents_out"] == 0:
            reasons = ", ".join(f"{k}: {v}" for k, v in s["skipped"].items()) or "none"
            example = ""
            if s["skipped_examples"]:
                source, row, reason = s["skipped_examples"][0]
                example = f"; e.g. {source} row {row} ({reason})"
            raise CorpusError(f"the {split} split encoded 0 documents ({s['documents_in']} read; skipped {reasons}){example}")
