"""Turning a parsed record into a curated ``Document``: images resolved, decoded, filtered, deduplicated.

Every reader parses its own format into the same shape — text strings and ``ImageItem``s in reading order
plus document metadata — and hands it to ``Curator.document``, so the policies live in one place:

- images: resolve (bytes, path, URL) → decode (bomb limit, EXIF, RGB) → filter (smallest side, aspect
  ratio) → resize / crop to the tokenizer's size. A *missing or undecodable* image skips the whole document
  (``missing_image="skip_document"``, docs/ARCHITECTURE.md) or only drops that image (``"drop_image"``, useful for
  web corpora where many URLs are dead). A *filtered or duplicate* image is dropped from its document and
  counted in ``ReadStats.images_dropped``.
  An interleaved document (OBELICS, MMC4) that loses every image this way keeps its text, as a text-only
  document (counted); a caption pair or ImageFolder image without its image is skipped.
- documents: text length bounds, images per document, and exact duplicates by content hash (texts and
  raw image bytes), each skip counted by reason.

Dedup is exact and scoped to one ``Curator``: encode uses one per input shard, so a rerun of any shard is
deterministic; cross-shard duplicates are found from the per-document hashes kept in the token shards.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

from mmgen.config.schema import DataConfig
from mmgen.data.document import Document, Part
from mmgen.data.images import decode_image, fit_image
from mmgen.data.reading import ImageRef, ReadStats, SkipRow


@dataclass
class ImageItem:
    """An image position of a parsed record, not yet resolved."""

    ref: bytes | str
    """Embedded bytes, a relative path, or a URL."""
    metadata: dict[str, Any] = field(default_factory=dict)
    fallback_url: str | None = None
    """Fetched (network allowed) when ``ref`` is a local path that is missing, e.g. MMC4's raw_url."""


Parsed = tuple[list[str | ImageItem], dict[str, Any]]
"""A parsed record: its texts and images in reading order, and the document's metadata."""


def content_hash(*chunks: bytes) -> int:
    """A 63-bit hash of the chunks, stable across runs and machines (fits int64 and uint64)."""
    h = hashlib.blake2b(digest_size=8)
    for chunk in chunks:
        h.update(len(chunk).to_bytes(8, "little"))
        h.update(chunk)
    return int.from_bytes(h.digest(), "little") >> 1


class Curator:
    """Builds documents under one ``DataConfig``'s policies; holds the seen-hash sets of its scope."""

    def __init__(self, options: DataConfig | None = None, *, image_size: int = 0, curate: bool = True):
        self.options = options or DataConfig()
        self.image_size = image_size
        self.curate = curate
        """False reads records as they are: no filters, no dedup (plain ``read_obelics``)."""
        self._seen_documents: set[int] = set()
        self._seen_images: set[int] = set()

    def refs(self, fs, shard_dir: str) -> ImageRef:
        o = self.options
        return ImageRef(fs=fs, shard_dir=shard_dir, image_root=o.image_root, allow_network=o.allow_network,
                        timeout=o.network_timeout, retries=o.network_retries)  # fmt: skip

    def documents(self, rows: Iterable[tuple[int, Any]], parse: Callable[[int, Any], Parsed | None], refs: ImageRef,
                  source: str, stats: ReadStats, *, keep_text: bool = False) -> Iterator[Document]:  # fmt: skip
        """The loop of every reader: each ``(row, raw record)`` parsed (None: nothing there, e.g. a blank line)
        and curated into a document stamped with its provenance; a ``SkipRow`` from either is counted in
        ``stats`` with its source and row, and the loop goes on."""
        for row, raw in rows:
            try:
                parsed = parse(row, raw)
                if parsed is None:
                    continue
                doc = self.document(*parsed, refs, stats, keep_text=keep_text)
            except SkipRow as skip:
                stats.skip(source, row, skip.reason)
                continue
            doc.metadata.update(source=source, row=row)
            stats.documents_read += 1
            yield doc

    def document(self, items: list[str | ImageItem], metadata: dict[str, Any], refs: ImageRef,
                 stats: ReadStats, *, keep_text: bool = False) -> Document:  # fmt: skip
        """The curated document, or ``SkipRow``; dropped images are counted in ``stats``.

        ``keep_text`` (interleaved corpora): a document that loses every image keeps its text as a text-only
        document, counted in ``stats.text_only``; otherwise (a caption without its image) it is skipped.
        """
        o = self.options
        items = [it for it in items if not (isinstance(it, str) and not it)]  # empty strings carry nothing
        for it in items:
            if isinstance(it, str):
                try:
                    it.encode("utf-8")
                except UnicodeEncodeError:  # lone surrogates from JSON escapes: no tokenizer can take them
                    raise SkipRow("non_utf8") from None
        if not items:
            raise SkipRow("empty_document")
        n_images = sum(not isinstance(it, str) for it in items)
        if self.curate:  # cheap checks first: no image is read for a document they reject
            chars = sum(len(t) for t in items if isinstance(t, str))
            if chars < o.min_text_chars:
                raise SkipRow("text_too_short")
            if o.max_text_chars and chars > o.max_text_chars:
                raise SkipRow("text_too_long")
            if o.max_images_per_document and n_images > o.max_images_per_document:
                raise SkipRow("too_many_images")
        raw = [it if isinstance(it, str) else self._bytes(it, refs) for it in items]
        doc_hash = self.document_hash(raw)  # kept in the token shards: duplicates across shards are found there
        if self.curate and o.dedup_documents:
            if doc_hash in self._seen_documents:
                raise SkipRow("duplicate_document")
            self._seen_documents.add(doc_hash)

        parts: list[Part] = []
        image_metadata: list[dict[str, Any]] = []
        dropped = 0
        for item, data in zip(items, raw):
            if isinstance(item, str):
                parts.append(item)
                continue
            try:
                image = self._image(data)
            except SkipRow as skip:
                if skip.reason.startswith("drop:"):
                    stats.images_dropped[skip.reason[5:]] += 1
                    dropped += 1
                    continue
                raise
            parts.append(image)
            image_metadata.append(item.metadata)
        if n_images and dropped == n_images:
            if not keep_text or not parts:
                raise SkipRow("no_images_left")
            stats.text_only += 1
        if not parts:
            raise SkipRow("empty_document")
        metadata = {**metadata, "content_hash": doc_hash}
        return Document(parts=merge_texts(parts) if dropped else parts, image_metadata=image_metadata, metadata=metadata)

    @staticmethod
    def document_hash(raw: list[str | bytes | SkipRow]) -> int:
        chunks = []
        for part in raw:
            if isinstance(part, str):
                chunks.append(b"t" + part.encode("utf-8", "surrogatepass"))
            elif isinstance(part, SkipRow):
                chunks.append(b"x" + part.reason.encode())
            else:
                chunks.append(b"i" + part)
        return content_hash(*chunks)

    def _bytes(self, item: ImageItem, refs: ImageRef) -> bytes | SkipRow:
        try:
            return refs.read(item.ref, item.fallback_url)
        except SkipRow as skip:
            return skip  # decided per policy in _image, after the document-level checks

    def _image(self, data: bytes | SkipRow):
        """The fitted image, ``SkipRow(reason)`` to skip the document, or ``SkipRow('drop:reason')``."""
        o = self.options
        drop_missing = o.missing_image == "drop_image"
        if isinstance(data, SkipRow):
            raise SkipRow(f"drop:{data.reason}") if drop_missing else data
        if self.curate and o.dedup_images:
            image_hash = content_hash(data)
            if image_hash in self._seen_images:
                raise SkipRow("drop:duplicate_image")
            self._seen_images.add(image_hash)
        try:
            image, (width, height) = decode_image(data, max_pixels=o.max_image_pixels, draft_size=self.image_size)
        except SkipRow as skip:
            raise SkipRow(f"drop:{skip.reason}") if drop_missing else skip
        if self.curate:
            if min(width, height) < o.min_image_side:
                raise SkipRow("drop:image_too_small")
            if o.max_aspect_ratio and max(width, height) > o.max_aspect_ratio * min(width, height):
                raise SkipRow("drop:bad_aspect_ratio")
        return fit_image(image, self.image_size, o.image_resize)


def merge_texts(parts: list[Part]) -> list[Part]:
    """Adjacent text parts (left next to each other by a dropped image) become one, space-separated."""
    merged: list[Part] = []
    for part in parts:
        if isinstance(part, str) and merged and isinstance(merged[-1], str):
            joint = "" if merged[-1][-1:].isspace() or part[:1].isspace() else " "
            merged[-1] = merged[-1] + joint + part
        else:
            merged.append(part)
    return merged
