"""Read MMC4 jsonl shards (plain, ``.jsonl.zip`` as published, or ``.jsonl.gz``) into ``Document``s.

The published schema (allenai/mmc4 README): one JSON object per line with ``text_list`` (sentences),
``image_info`` (``image_name``, ``raw_url``, ``matched_text_index``, ``matched_sim``, ``face_detections``),
``similarity_matrix`` (``len(image_info) × len(text_list)``), ``url`` and ``could_have_url_duplicate``.

Each image goes immediately before the sentence of its ``matched_text_index`` (OpenFlamingo's convention;
images matched to one sentence keep their ``image_info`` order); an image without one (absent or null: a
record not assigned yet, which ``data/curate.py`` assigns) goes after the last sentence; the sentences between images are joined
with spaces into one text part. ``image_name`` is looked up beside the shard (or under ``data.image_root``);
when it is missing there, ``raw_url`` is fetched if the config allows network. A ``null`` sentence is
empty text. The row of a record is its line number in the (unzipped) shard.
"""

from __future__ import annotations

import gzip
import json
import posixpath
import zipfile
import zlib
from typing import Any, Callable, Iterator

import fsspec

from mmgen.data.curation import Curator, ImageItem, Parsed
from mmgen.data.document import Document
from mmgen.data.reading import CorpusError, ReadStats, SkipRow, sampling_field

SUFFIXES = (".jsonl", ".jsonl.zip", ".jsonl.gz")


def jsonl_lines(fs: fsspec.AbstractFileSystem, path: str, source: str) -> Iterator[tuple[int, bytes]]:
    """(line number, raw line) of a jsonl file, unzipping ``.zip`` (every member, in name order) and ``.gz``."""
    try:
        with fs.open(path, "rb") as raw:
            if path.endswith(".zip"):
                with zipfile.ZipFile(raw) as archive:
                    members = sorted(n for n in archive.namelist() if not n.endswith("/"))
                    row = 0
                    for name in members:
                        with archive.open(name) as f:
                            for line in f:
                                yield row, line
                                row += 1
            elif path.endswith(".gz"):
                with gzip.open(raw) as f:
                    yield from enumerate(f)
            else:
                yield from enumerate(raw)
    except (zipfile.BadZipFile, gzip.BadGzipFile, zlib.error, EOFError, OSError) as err:
        raise CorpusError(f"{source} is not a readable jsonl file ({type(err).__name__}: {err})") from None


def parse_json_line(line: bytes) -> dict[str, Any] | None:
    """The record of one line; None for a blank line; ``SkipRow`` for non-UTF-8 or bad JSON."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise SkipRow("non_utf8") from None
    if not text.strip(" \t\r\n"):  # JSON's whitespace only: str.strip() would also drop control characters
        return None
    try:
        record = json.loads(text)
    except ValueError:
        raise SkipRow("bad_json") from None
    if not isinstance(record, dict):
        raise SkipRow("bad_record")
    return record


def read_jsonl_shard(fs: fsspec.AbstractFileSystem, path: str, source: str, curator: Curator, stats: ReadStats,
                     parse: Callable[[dict[str, Any], int], Parsed], *, keep_text: bool) -> Iterator[Document]:  # fmt: skip
    """Documents of a jsonl shard whose records ``parse(record, row)`` reads (MMC4's, caption pairs')."""

    def parse_line(row: int, line: bytes) -> Parsed | None:
        record = parse_json_line(line)
        return None if record is None else parse(record, row)

    refs = curator.refs(fs, posixpath.dirname(path))
    yield from curator.documents(jsonl_lines(fs, path, source), parse_line, refs, source, stats, keep_text=keep_text)


def read_shard(fs: fsspec.AbstractFileSystem, path: str, source: str, curator: Curator,
               stats: ReadStats) -> Iterator[Document]:  # fmt: skip
    yield from read_jsonl_shard(fs, path, source, curator, stats, lambda record, row: parse_record(record),
                                keep_text=True)


def parse_record(record: dict[str, Any]) -> Parsed:
    """Sentences and images in reading order, and the document metadata; ``SkipRow`` when malformed."""
    texts, images = record.get("text_list"), record.get("image_info", [])
    if not isinstance(texts, list) or not isinstance(images, list):
        raise SkipRow("bad_record")
    if not all(t is None or isinstance(t, str) for t in texts):
        raise SkipRow("bad_record")
    before: dict[int, list[ImageItem]] = {}
    for info in images:
        if not isinstance(info, dict):
            raise SkipRow("bad_record")
        index = info.get("matched_text_index")
        if index is None:  # not assigned to a sentence yet: after the text (data/curate.py assigns it)
            index = len(texts)
        elif not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(texts):
            raise SkipRow("misaligned")
        name, url = info.get("image_name"), info.get("raw_url")
        url = url if isinstance(url, str) and url else None
        ref = name if isinstance(name, str) and name else url
        if ref is None:
            raise SkipRow("bad_image_reference")
        before.setdefault(index, []).append(ImageItem(ref=ref, metadata=dict(info), fallback_url=url))
    matrix = record.get("similarity_matrix")
    if matrix is not None and (
        not isinstance(matrix, list) or len(matrix) != len(images)
        or any(not isinstance(r, list) or len(r) != len(texts) for r in matrix)
    ):  # fmt: skip
        raise SkipRow("misaligned")

    items: list[str | ImageItem] = []
    sentences: list[str] = []
    for j, sentence in enumerate(texts):
        if j in before:
            if sentences:
                items.append(" ".join(sentences))
                sentences = []
            items.extend(before[j])
        if sentence:
            sentences.append(sentence)
    if sentences:
        items.append(" ".join(sentences))
    items.extend(before.get(len(texts), []))
    metadata = {k: record[k] for k in ("url", "could_have_url_duplicate") if k in record}
    return items, {**metadata, **sampling_field(record)}
