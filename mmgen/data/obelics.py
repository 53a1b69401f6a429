"""Read OBELICS-schema parquet shards into ``Document``s, from any fsspec URL.

The schema (docs/ARCHITECTURE.md): ``texts: list<string|null>`` and ``images: list<binary|string|null>`` aligned, one
non-null per position; optional ``metadata`` (JSON list, null at text positions) and ``general_metadata``
(JSON dict). Images may be embedded bytes (PNG/JPEG...), paths relative to the shard, or URLs (the
published OBELICS form), fetched only when the config allows network.

A bad *row* (undecodable image, misaligned lists, empty document, bad metadata) is skipped and counted in a
``ReadStats`` with its shard and row; a bad *file* (not parquet, missing or mistyped columns) raises
``CorpusError`` naming the file. Files are resolved eagerly (no match fails at the call) and opened lazily
as iteration reaches them. ``read_obelics`` reads rows as they are; ``mmgen.data.corpus.open_corpus``
reads the same shards with the config's curation (filters, dedup, resizing).
"""

from __future__ import annotations

import json
import posixpath
from typing import Any, Iterator

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from mmgen.data.curation import Curator, ImageItem
from mmgen.data.document import Document
from mmgen.data.reading import CorpusError, ReadStats, SkipRow, list_files, sampling_field, source_name

__all__ = ["CorpusError", "ReadStats", "SkipRow", "list_shards", "read_obelics", "read_shard"]

REQUIRED_COLUMNS = ("texts", "images")
OPTIONAL_COLUMNS = ("metadata", "general_metadata")
SUFFIXES = (".parquet",)
BATCH_ROWS = 256


def list_shards(url: str) -> tuple[fsspec.AbstractFileSystem, list[str]]:
    """The parquet files a URL names: a file, a folder (searched recursively) or a glob."""
    return list_files(url, SUFFIXES, "parquet shards")


def read_obelics(url: str, *, stats: ReadStats | None = None) -> Iterator[Document]:
    """Documents of every shard at ``url`` in file and row order, uncurated; pass ``stats`` to see skips."""
    fs, files = list_shards(url)
    stats = stats if stats is not None else ReadStats()
    curator = Curator(curate=False)

    def generate() -> Iterator[Document]:
        for path in files:
            yield from read_shard(fs, path, source_name(fs, path, url), curator, stats)

    return generate()


def _open_shard(fs: fsspec.AbstractFileSystem, path: str, source: str) -> tuple[pq.ParquetFile, list[str]]:
    try:
        parquet = pq.ParquetFile(fs.open(path, "rb"))
    except (pa.ArrowInvalid, pa.ArrowException, OSError) as err:
        raise CorpusError(f"{source} is not a readable parquet file ({err})") from None
    schema = parquet.schema_arrow
    missing = [c for c in REQUIRED_COLUMNS if c not in schema.names]
    if missing:
        raise CorpusError(
            f"{source} lacks OBELICS column(s) {', '.join(missing)} (has: {', '.join(schema.names) or 'none'})"
        )
    for name, accepted in (("texts", (pa.string(), pa.large_string())),
                           ("images", (pa.binary(), pa.large_binary(), pa.string(), pa.large_string()))):  # fmt: skip
        kind = schema.field(name).type
        if not (pa.types.is_list(kind) or pa.types.is_large_list(kind)) or kind.value_type not in accepted:
            raise CorpusError(f"{source}: column '{name}' has type {kind}, expected a list of {accepted[0]}")
    columns = list(REQUIRED_COLUMNS) + [c for c in OPTIONAL_COLUMNS if c in schema.names]
    return parquet, columns


def read_shard(fs: fsspec.AbstractFileSystem, path: str, source: str, curator: Curator,
               stats: ReadStats) -> Iterator[Document]:  # fmt: skip
    """Documents of one parquet shard, curated by ``curator``."""
    parquet, columns = _open_shard(fs, path, source)
    refs = curator.refs(fs, posixpath.dirname(path))
    yield from curator.documents(_rows(parquet, columns, source), lambda row, record: parse_record(record), refs,
                                 source, stats, keep_text=True)


def _rows(parquet: pq.ParquetFile, columns: list[str], source: str) -> Iterator[tuple[int, dict[str, Any]]]:
    row = 0
    try:
        for batch in parquet.iter_batches(batch_size=BATCH_ROWS, columns=columns):
            data = batch.to_pydict()
            for i in range(batch.num_rows):
                yield row, {c: data[c][i] for c in columns}
                row += 1
    except (pa.ArrowInvalid, OSError) as err:  # e.g. a corrupt page, non-UTF-8 strings
        raise CorpusError(f"{source}: cannot read rows from {row} on ({err})") from None


def parse_record(record: dict[str, Any]) -> tuple[list[str | ImageItem], dict[str, Any]]:
    """Texts and images of one row in order, and its general metadata; ``SkipRow`` when malformed."""
    texts, images = record["texts"], record["images"]
    if texts is None or images is None or len(texts) != len(images):
        raise SkipRow("misaligned")
    if not texts:
        raise SkipRow("empty_document")
    if all(t is None and im is None for t, im in zip(texts, images)):
        raise SkipRow("all_null")
    metadata = _json(record.get("metadata"), list)
    general = _json(record.get("general_metadata"), dict) or {}
    general.update(sampling_field(general))  # checked: the loader draws the document by it
    if metadata is not None and len(metadata) != len(texts):
        raise SkipRow("bad_metadata")
    items: list[str | ImageItem] = []
    for position, (text, image) in enumerate(zip(texts, images)):
        if (text is None) == (image is None):
            raise SkipRow("misaligned")
        if text is not None:
            items.append(text)
            continue
        entry = metadata[position] if metadata is not None else None
        entry = entry if isinstance(entry, dict) else {}
        fallback = entry.get("src") if isinstance(image, str) and not image.startswith(("http://", "https://")) else None
        items.append(ImageItem(ref=image, metadata=entry, fallback_url=fallback if isinstance(fallback, str) else None))
    return items, dict(general)


def _json(text: str | None, kind: type) -> Any:
    if text is None:
        return None
    if not isinstance(text, (str, bytes)):  # a metadata column of another type: the row's metadata is unusable
        raise SkipRow("bad_metadata")
    try:
        value = json.loads(text)
    except ValueError:
        raise SkipRow("bad_metadata") from None
    if value is not None and not isinstance(value, kind):
        raise SkipRow("bad_metadata")
    return value
