"""Image–caption pairs: read from a caption-pair jsonl, or as token ids for the dual encoder."""

from __future__ import annotations

from typing import Any, Callable

import torch
from PIL import Image

from mmgen.config.schema import DataConfig
from mmgen.data.corpus import open_corpus
from mmgen.data.reading import CorpusError

from mmgen.tokenizers.image import ImageTokenizer
from mmgen.tokenizers.text import TextTokenizer


def read_caption_pairs(jsonl_url: str, options: DataConfig | None = None, *, limit: int = 0,
                       log: Callable[[str], None] = print) -> list[tuple[Image.Image, str, dict[str, Any]]]:
    """(RGB image, caption, image metadata) of each readable pair of a caption-pair file (bad rows are skipped and
    counted, and the count is logged); with ``limit``, the first ``limit`` pairs only, and the rest are not read.
    A file whose every row is skipped is an error: an empty task set would train and score nothing."""
    corpus = open_corpus(jsonl_url, kind="captions", options=options)
    pairs = []
    for doc in corpus:
        if limit and len(pairs) == limit:
            break
        caption = " ".join(doc.texts)
        pairs.append((doc.images[0], caption, doc.image_metadata[0] if doc.image_metadata else {}))
    if corpus.stats.total_skipped:
        if not pairs:
            raise CorpusError(f"{jsonl_url}: no readable caption pair ({corpus.stats.summary()})")
        log(f"{jsonl_url}: {corpus.stats.summary()}")
    return pairs


def tokenized_caption_pairs(
    jsonl_url: str, text: TextTokenizer, image: ImageTokenizer, *, batch_size: int = 256
) -> tuple[torch.Tensor, list[list[int]], list[str]]:
    """(code grids [N, h, w], caption piece ids, caption strings) of a caption-pair jsonl file."""
    pairs = read_caption_pairs(jsonl_url)
    captions = [caption for _, caption, _ in pairs]
    grids = [image.encode([p[0] for p in pairs[i : i + batch_size]]).cpu() for i in range(0, len(pairs), batch_size)]
    return torch.cat(grids), [text.encode(c) for c in captions], captions
