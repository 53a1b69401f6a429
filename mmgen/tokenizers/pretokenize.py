"""Documents → token shards, with the VQ-VAE run over batches of images.

The images of a chunk of documents are encoded in one batch (the VQ encoder is
the cost here), then each document becomes ``BOS text… BOI codes EOI … EOS`` and is
appended to a ``TokenShardWriter`` with its provenance and image ground truth.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from typing import Callable, Iterable, Iterator


from mmgen.data.document import Document
from mmgen.data.token_shards import TokenShardWriter
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
    """Encode every document into ``writer``; returns counts (documents, tokens, images, skipped by reason)."""
    counts: Counter[str] = Counter()
    last_log = time.monotonic()
    for chunk in _chunks(documents, image_batch_size):
        for doc, ids in zip(chunk, tokenizer.encode_documents(chunk)):
            meta = {"source": doc.metadata.get("source"), "row": doc.metadata.get("row"), "images": doc.image_metadata}
            writer.add(ids, meta)
            counts["documents"] += 1
            counts["tokens"] += len(ids)
            counts["images"] += len(doc.images)
        if time.monotonic() - last_log > log_every_seconds:
            log(f"  {counts['documents']} documents, {counts['tokens']} tokens")
            last_log = time.monotonic()
    return dict(counts)
