"""What every corpus reader shares: errors, skip accounting, file listing, image references.

Two kinds of failure, on purpose (docs/ARCHITECTURE.md): a bad *record* raises ``SkipRow`` inside a reader and is
counted in ``ReadStats`` with its shard and row, so one bad record never stops a run; a bad *file* raises
``CorpusError`` naming the file, because it means the user pointed at the wrong thing.

An image reference is embedded bytes, a path inside the shard's folder (or ``image_root``), or an
``http(s)://`` URL, fetched only when ``allow_network`` is on (with size and time limits and retries).
``ImageRef`` resolves one to bytes; ``mmgen.data.images`` decodes them.
"""

from __future__ import annotations

import os
import posixpath
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field

import fsspec
import fsspec.implementations.local

_NETWORK_PROTOCOLS = ("http://", "https://")
MAX_DOWNLOAD_BYTES = 64 << 20  # no image worth tokenizing is larger; a bigger body is not read to the end


SAMPLING_KEY = "sampling_probability"
"""Document metadata: the chance that the loader draws the document in one pass over its corpus, in (0, 1]
(written by data/curate.py's balancing that keeps the data, ``curate.concept_balance sample``); absent: 1.
Caption-pair and MMC4 records carry it as a top-level field, OBELICS rows in ``general_metadata``."""


def sampling_field(record: dict) -> dict:
    """``{SAMPLING_KEY: p}`` of a record that carries one, else ``{}``; ``SkipRow`` when it is no number in (0, 1]."""
    if SAMPLING_KEY not in record:
        return {}
    p = record[SAMPLING_KEY]
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p <= 1:
        raise SkipRow("bad_sampling_probability")
    return {SAMPLING_KEY: float(p)}


class CorpusError(ValueError):
    """A corpus file (or URL) that is wrong as a whole; the message names it."""


class SkipRow(Exception):
    """A record is bad for the reason given (a short snake_case word used as a counter key)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass
class ReadStats:
    """What a read produced and what it skipped, with a few examples to show the user."""

    documents_read: int = 0
    skipped: Counter = field(default_factory=Counter)
    """Skipped records by reason (e.g. 'undecodable_image', 'misaligned', 'empty_document')."""
    images_dropped: Counter = field(default_factory=Counter)
    """Images left out of their document by reason (duplicates, filtered, missing under 'drop_image'); a
    caption pair that loses its image is then also skipped as 'no_images_left'."""
    text_only: int = 0
    """Interleaved documents that lost every image and were kept as text only (among ``documents_read``)."""
    examples: list[tuple[str, int, str]] = field(default_factory=list)
    """Up to ``max_examples`` skipped records as (source, row, reason)."""
    max_examples: int = 20

    def skip(self, source: str, row: int, reason: str) -> None:
        self.skipped[reason] += 1
        if len(self.examples) < self.max_examples:
            self.examples.append((source, row, reason))

    @property
    def total_skipped(self) -> int:
        return sum(self.skipped.values())

    @property
    def records_in(self) -> int:
        return self.documents_read + self.total_skipped

    def merge(self, other: "ReadStats") -> None:
        self.documents_read += other.documents_read
        self.skipped.update(other.skipped)
        self.images_dropped.update(other.images_dropped)
        self.text_only += other.text_only
        self.examples.extend(other.examples[: max(0, self.max_examples - len(self.examples))])

    def to_dict(self) -> dict:
        return {"documents_read": self.documents_read, "skipped": dict(sorted(self.skipped.items())),
                "images_dropped": dict(sorted(self.images_dropped.items())), "text_only": self.text_only,
                "examples": [list(e) for e in self.examples]}  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict) -> "ReadStats":
        return cls(documents_read=data["documents_read"], skipped=Counter(data["skipped"]),
                   images_dropped=Counter(data.get("images_dropped", {})), text_only=data.get("text_only", 0),
                   examples=[tuple(e) for e in data.get("examples", [])])  # fmt: skip

    def summary(self) -> str:
        dropped = ""
        if self.images_dropped:
            dropped = "; images dropped: " + ", ".join(f"{r}: {n}" for r, n in sorted(self.images_dropped.items()))
        if self.text_only:
            dropped += f"; {self.text_only} documents kept as text only"
        if not self.skipped:
            return f"read {self.documents_read} documents, skipped none{dropped}"
        reasons = ", ".join(f"{reason}: {n}" for reason, n in sorted(self.skipped.items()))
        first = "; ".join(f"{src} row {row} ({reason})" for src, row, reason in self.examples[:3])
        return f"read {self.documents_read} documents, skipped {self.total_skipped} ({reasons}); e.g. {first}{dropped}"


def list_files(url: str, suffixes: tuple[str, ...], what: str) -> tuple[fsspec.AbstractFileSystem, list[str]]:
    """The files a URL names: a file, a folder (searched recursively for ``suffixes``) or a glob."""
    fs, path = fsspec.core.url_to_fs(url)
    if any(ch in path for ch in "*?["):
        files = sorted(p for p in fs.glob(path) if fs.isfile(p))
    elif fs.isdir(path):
        files = sorted(p for p in fs.find(path) if p.endswith(suffixes))
    elif fs.isfile(path):
        files = [path]
    else:
        files = []
    if not files:
        raise CorpusError(f"no {what} at {url}")
    return fs, files


def source_name(fs: fsspec.AbstractFileSystem, path: str, url: str) -> str:
    """How provenance names a file: with its protocol when the user gave one."""
    return fs.unstrip_protocol(path) if "://" in url else path


@dataclass
class ImageRef:
    """Resolves image references of one shard to bytes; every failure is a ``SkipRow``.

    A corpus is data from elsewhere, so its references are confined: a path is read only when it resolves
    (symlinks followed) inside the shard's folder or ``image_root``, only from a regular file no larger than
    ``MAX_DOWNLOAD_BYTES``; only ``http(s)`` URLs are fetched, and only with ``allow_network``; a reference
    naming any other file system or protocol chain (``s3://``, ``file://``, ``simplecache::http://``) is refused.
    """

    fs: fsspec.AbstractFileSystem
    shard_dir: str
    image_root: str = ""
    """Folder (any fsspec URL) that relative image paths are resolved against instead of the shard's."""
    allow_network: bool = False
    timeout: float = 10.0
    retries: int = 2

    def read(self, ref: bytes | str, url: str | None = None) -> bytes:
        """Bytes of ``ref``; ``url`` is a fallback fetched when ``ref`` is a missing local path."""
        if isinstance(ref, (bytes, bytearray, memoryview)):
            return bytes(ref)
        if not isinstance(ref, str) or not ref:
            raise SkipRow("bad_image_reference")
        if ref.startswith(_NETWORK_PROTOCOLS):
            return self.fetch(ref)
        if "://" in ref or "::" in ref:
            raise SkipRow("foreign_image_reference")
        try:
            return self._read_inside(ref)
        except ImportError as err:  # e.g. an s3:// image_root without s3fs: true of every image, not a per-record skip
            raise CorpusError(f"cannot open image {ref}: {err}") from None
        except (OSError, ValueError):
            if url and self.allow_network:
                return self.fetch(url)
            raise SkipRow("missing_image") from None

    def _root(self) -> tuple[fsspec.AbstractFileSystem, str]:
        if self.image_root:
            return fsspec.core.url_to_fs(self.image_root)
        return self.fs, self.shard_dir

    def _read_inside(self, ref: str) -> bytes:
        fs, root = self._root()
        # MMC4 ships its images in a folder beside the shards: try there after the shard's own folder
        candidates = [ref] if self.image_root else [ref, posixpath.join("images", ref)]
        for i, candidate in enumerate(candidates):
            path = _confined(fs, root, candidate)
            if i + 1 < len(candidates) and not fs.exists(path):
                continue
            info = fs.info(path)
            if info.get("type") != "file":  # a FIFO or device would block or never end
                raise SkipRow("not_a_regular_file")
            if (info.get("size") or 0) > MAX_DOWNLOAD_BYTES:
                raise SkipRow("image_too_large")
            with fs.open(path, "rb") as f:
                data = f.read(MAX_DOWNLOAD_BYTES + 1)
            if len(data) > MAX_DOWNLOAD_BYTES:
                raise SkipRow("image_too_large")
            return data
        raise FileNotFoundError(ref)

    def fetch(self, url: str) -> bytes:
        if not url.startswith(_NETWORK_PROTOCOLS):
            raise SkipRow("bad_image_reference")
        if not self.allow_network:
            raise SkipRow("url_image")  # network fetching is off unless the config turns it on
        for attempt in range(self.retries + 1):
            try:
                return self._download(url)
            except SkipRow:
                raise
            except Exception:  # noqa: BLE001 - URLError, HTTPError, timeouts, bad URLs: all mean "not fetched"
                if attempt < self.retries:
                    time.sleep(0.5 * 2**attempt)
        raise SkipRow("fetch_failed")

    def _download(self, url: str) -> bytes:
        """One attempt, abandoned after ``timeout`` seconds in all (a server that trickles bytes included)."""
        deadline = time.monotonic() + self.timeout
        request = urllib.request.Request(url, headers={"User-Agent": "mmgen-corpus-reader"})
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            chunks, size = [], 0
            while chunk := response.read(1 << 16):
                size += len(chunk)
                if size > MAX_DOWNLOAD_BYTES:
                    raise SkipRow("image_too_large")
                if time.monotonic() > deadline:
                    raise TimeoutError(url)
                chunks.append(chunk)
        return b"".join(chunks)


def _confined(fs: fsspec.AbstractFileSystem, root: str, ref: str) -> str:
    """``ref`` resolved against ``root``; ``SkipRow('image_outside_corpus')`` when it escapes ``root``."""
    local = isinstance(fs, fsspec.implementations.local.LocalFileSystem)
    resolve = os.path.realpath if local else posixpath.normpath
    base = resolve(root)
    path = resolve(posixpath.join(root, ref))  # an absolute ref replaces root here, then must still lie inside
    if path != base and not path.startswith(base.rstrip("/") + "/"):
        raise SkipRow("image_outside_corpus")
    return path
