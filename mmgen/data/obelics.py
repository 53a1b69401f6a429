"""Read OBELICS-schema parquet shards into ``Document``s, from any fsspec URL.

The schema (DESIGN §5): ``texts: list<string|null>`` and ``images: list<binary|string|null>`` aligned, one
non-null per position; optional ``metadata`` (JSON list, null at text positions) and ``general_metadata``
(JSON dict). Images may be embedded bytes (PNG/JPEG...) or paths relative to the shard; URLs are not
fetched, so a document that needs one is skipped.

Two kinds of failure, on purpose: a bad *row* (undecodable image, misaligned lists, empty document, bad
metadata) is skipped and counted in a ``ReadStats`` with its shard and row, so one bad record never stops a
run; a bad *file* (not parquet, missing or mistyped columns) raises ``CorpusError`` naming the file, because
it means the user pointed at the wrong thing. Files are resolved eagerly (no match fails at the call) and
opened lazily as iteration reaches them.
"""

from __future__ import annotations

import io
import json
import posixpath
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterator

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from mmgen.data.document import Document, Part

REQUIRED_COLUMNS = ("texts", "images")
OPTIONAL_COLUMNS = ("metadata", "general_metadata")
BATCH_ROWS = 256


class CorpusError(ValueError):
    """A corpus file (or URL) that is wrong as a whole; the message names it."""


class SkipRow(Exception):
    """Internal: the row is bad for the reason given."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass
class ReadStats:
    """What a read produced and what it skipped, with a few examples to show the user."""

    documents_read: int = 0
    skipped: Counter = field(default_factory=Counter)
    """Skipped rows by reason (e.g. 'undecodable_image', 'misaligned', 'empty_document')."""
    examples: list[tuple[str, int, str]] = field(default_factory=list)
    """Up to ``max_examples`` skipped rows as (source, row, reason)."""
    max_examples: int = 20

    def skip(self, source: str, row: int, reason: str) -> None:
        self.skipped[reason] += 1
        if len(self.examples) < self.max_examples:
            self.examples.append((source, row, reason))

    @property
    def total_skipped(self) -> int:
        return sum(self.skipped.values())

    def summary(self) -> str:
        if not self.skipped:
            return f"read {self.documents_read} documents, skipped none"
        reasons = ", ".join(f"{reason}: {n}" for reason, n in sorted(self.skipped.items()))
        first = "; ".join(f"{src} row {row} ({reason})" for src, row, reason in self.examples[:3])
        return f"read {self.documents_read} documents, skipped {self.total_skipped} ({reasons}); e.g. {first}"


def list_shards(url: str) -> tuple[fsspec.AbstractFileSystem, list[str]]:
    """The parquet files a URL names: a file, a folder (searched recursively) or a glob."""
    fs, path = fsspec.core.url_to_fs(url)
    if any(ch in path for ch in "*?["):
        files = sorted(p for p in fs.glob(path) if fs.isfile(p))
    elif fs.isdir(path):
        files = sorted(p for p in fs.find(path) if p.endswith(".parquet"))
    elif fs.isfile(path):
        files = [path]
    else:
        files = []
    if not files:
        raise CorpusError(f"no parquet shards at {url}")
    return fs, files


def read_obelics(url: str, *, stats: ReadStats | None = None) -> Iterator[Document]:
    """Documents of every shard at ``url`` in file and row order; pass ``stats`` to see what was skipped."""
    fs, files = list_shards(url)
    keep_protocol = "://" in url
    stats = stats if stats is not None else ReadStats()

    def generate() -> Iterator[Document]:
        for path in files:
            source = fs.unstrip_protocol(path) if keep_protocol else path
            yield from _read_shard(fs, path, source, stats)

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


def _read_shard(fs: fsspec.AbstractFileSystem, path: str, source: str, stats: ReadStats) -> Iterator[Document]:
    parquet, columns = _open_shard(fs, path, source)
    row = 0
    try:
        batches = parquet.iter_batches(batch_size=BATCH_ROWS, columns=columns)
        for batch in batches:
            data = batch.to_pydict()
            for i in range(batch.num_rows):
                record = {c: data[c][i] for c in columns}
                try:
                    doc = _document(record, fs, posixpath.dirname(path))
                except SkipRow as skip:
                    stats.skip(source, row, skip.reason)
                else:
                    doc.metadata.update(source=source, row=row)
                    stats.documents_read += 1
                    yield doc
                row += 1
    except (pa.ArrowInvalid, OSError) as err:  # e.g. a corrupt page, non-UTF-8 strings
        raise CorpusError(f"{source}: cannot read rows from {row} on ({err})") from None


def _document(record: dict[str, Any], fs: fsspec.AbstractFileSystem, shard_dir: str) -> Document:
    texts, images = record["texts"], record["images"]
    if texts is None or images is None or len(texts) != len(images):
        raise SkipRow("misaligned")
    if not texts:
        raise SkipRow("empty_document")
    if all(t is None and im is None for t, im in zip(texts, images)):
        raise SkipRow("all_null")
    metadata = _json(record.get("metadata"), list)
    general = _json(record.get("general_metadata"), dict) or {}
    if metadata is not None and len(metadata) != len(texts):
        raise SkipRow("bad_metadata")

    parts: list[Part] = []
    image_metadata: list[dict[str, Any]] = []
    for position, (text, image) in enumerate(zip(texts, images)):
        if (text is None) == (image is None):
            raise SkipRow("misaligned")
        if text is not None:
            if text:  # empty strings carry nothing
                parts.append(text)
            continue
        parts.append(_decode_image(image, fs, shard_dir))
        entry = metadata[position] if metadata is not None else None
        image_metadata.append(entry if isinstance(entry, dict) else {})
    if not parts:
        raise SkipRow("empty_document")
    return Document(parts=parts, image_metadata=image_metadata, metadata=dict(general))


def _json(text: str | None, kind: type) -> Any:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        raise SkipRow("bad_metadata") from None
    if value is not None and not isinstance(value, kind):
        raise SkipRow("bad_metadata")
    return value


def _decode_image(image: bytes | str, fs: fsspec.AbstractFileSystem, shard_dir: str) -> Image.Image:
    if isinstance(image, str):
        if "://" in image:
            raise SkipRow("url_image")  # network fetching is off
        try:
            with fs.open(posixpath.join(shard_dir, image), "rb") as f:
                image = f.read()
        except (OSError, ValueError):
            raise SkipRow("missing_image") from None
    try:
        with Image.open(io.BytesIO(image)) as im:
            return im.convert("RGB")
    except Exception:  # PIL raises many types (UnidentifiedImageError, OSError, SyntaxError, ...)
        raise SkipRow("undecodable_image") from None
