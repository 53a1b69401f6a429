"""Read caption-pair jsonl (``{"image": ..., "caption": ..., "metadata": {...}}`` per line) into documents.

``image`` is a path relative to the jsonl file (or ``data.image_root``), an fsspec URL, or an http(s) URL
(fetched only when the config allows network); the optional ``metadata`` dict becomes the image's
metadata (the shapes world keeps each scene's ground truth there). A document is the caption and the
image in ``data.caption_order`` ('both' by default: even rows put the caption first and odd rows the
image first, so a model learns both directions, text to
image and image to text, as CM3leon trains). An optional top-level ``sampling_probability`` is the pair's chance
to be drawn in one pass (``mmgen.data.reading.SAMPLING_KEY``). Files may be plain, ``.zip`` or ``.gz`` like MMC4's.
"""

from __future__ import annotations

from typing import Any, Iterator

import fsspec

from mmgen.data.curation import Curator, ImageItem
from mmgen.data.document import Document
from mmgen.data.mmc4 import read_jsonl_shard
from mmgen.data.reading import ReadStats, SkipRow, sampling_field

SUFFIXES = (".jsonl", ".jsonl.zip", ".jsonl.gz")


def parse_record(record: dict[str, Any], caption_order: str, row: int = 0) -> tuple[list[str | ImageItem], dict[str, Any]]:
    image, caption, metadata = record.get("image"), record.get("caption"), record.get("metadata", {})
    if not isinstance(caption, str) or not isinstance(image, str) or not image:
        raise SkipRow("bad_record")
    if not isinstance(metadata, dict):
        metadata = {"value": metadata}
    item = ImageItem(ref=image, metadata=metadata)
    return in_caption_order(caption, item, caption_order, row), {"image": image, **sampling_field(record)}


def in_caption_order(caption: str, image: ImageItem, caption_order: str, row: int) -> list[str | ImageItem]:
    """Caption and image in the configured order; 'both' alternates by row (the caption first on even rows)."""
    if caption_order == "both":
        caption_order = "image_first" if row % 2 else "text_first"
    return [caption, image] if caption_order == "text_first" else [image, caption]


def read_shard(fs: fsspec.AbstractFileSystem, path: str, source: str, curator: Curator,
               stats: ReadStats) -> Iterator[Document]:  # fmt: skip
    order = curator.options.caption_order
    yield from read_jsonl_shard(fs, path, source, curator, stats,
                                lambda record, row: parse_record(record, order, row), keep_text=False)
