"""The public entry point: ``open_corpus(url)`` opens any supported corpus as ``Document``s.

    from mmgen.data.corpus import open_corpus
    corpus = open_corpus("s3://bucket/mmc4/docs_no_face_shard_*_v2.jsonl.zip")
    for doc in corpus:                      # curated Documents, provenance in doc.metadata
        ...
    print(corpus.stats.summary())           # read / skipped by reason / images dropped

``read_documents("a,b", stats=...)`` reads several comma-separated corpora back to back.

Kinds (``kind="auto"`` tells them apart from file names and the first record):

- ``obelics``: parquet shards (``texts`` / ``images`` / ``metadata`` / ``general_metadata``)
- ``mmc4``: jsonl, ``.jsonl.zip`` or ``.jsonl.gz`` with ``text_list`` and ``image_info``
- ``captions``: jsonl of ``{"image": ..., "caption": ...}``
- ``imagefolder``: a folder of class folders of images → caption documents

``url`` is a file, a folder or a glob, local or any fsspec URL. A corpus is a list of *shards* (files;
class folders for an ImageFolder), the unit that ``tokenizers/encode.py`` splits across ranks and resumes
by; ``read_shard(i)`` reads one with its own curation scope, so the same shard always yields the same
documents. Reading policies (network, image decoding and resizing, filters, dedup) come from
``DataConfig``; ``image_size`` is the side images are fitted to (the image tokenizer's), 0 keeps them.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from typing import Callable, Iterator

import fsspec

from mmgen.config.schema import DataConfig
from mmgen.data import caption_pairs, imagefolder, mmc4, obelics
from mmgen.data.curation import Curator
from mmgen.data.document import Document
from mmgen.data.mmc4 import jsonl_lines, parse_json_line
from mmgen.data.reading import CorpusError, ReadStats, SkipRow, list_files, source_name

KINDS = ("obelics", "mmc4", "captions", "imagefolder")
_JSONL = (".jsonl", ".jsonl.zip", ".jsonl.gz")


@dataclass
class Corpus:
    """An opened corpus: its shards, and documents from one shard or all of them."""

    url: str
    kind: str
    shards: list[str]
    """Source name of every shard (file, or class folder), in reading order."""
    options: DataConfig = field(default_factory=DataConfig)
    image_size: int = 0
    stats: ReadStats = field(default_factory=ReadStats)
    """What iterating the whole corpus read and skipped (``read_shard`` takes its own)."""
    _fs: fsspec.AbstractFileSystem | None = None
    _paths: list[str] = field(default_factory=list)

    def curator(self) -> Curator:
        return Curator(self.options, image_size=self.image_size)

    def read_shard(self, index: int, *, stats: ReadStats | None = None,
                   curator: Curator | None = None) -> Iterator[Document]:  # fmt: skip
        """Documents of shard ``index``; a fresh curator (dedup scope) unless one is given."""
        stats = stats if stats is not None else ReadStats()
        curator = curator or self.curator()
        path, source = self._paths[index], self.shards[index]
        if self.kind == "imagefolder":
            return imagefolder.read_shard(self._fs, path, source, curator, stats, label_index=index)
        reader: Callable = {"obelics": obelics.read_shard, "mmc4": mmc4.read_shard,
                            "captions": caption_pairs.read_shard}[self.kind]  # fmt: skip
        return reader(self._fs, path, source, curator, stats)

    def __iter__(self) -> Iterator[Document]:
        curator = self.curator()  # one dedup scope over the whole corpus
        for i in range(len(self.shards)):
            yield from self.read_shard(i, stats=self.stats, curator=curator)

    @property
    def labels(self) -> list[str]:
        """Class labels of an ImageFolder, in label-index order (empty for other kinds)."""
        return [imagefolder.class_label(p) for p in self._paths] if self.kind == "imagefolder" else []


def open_corpus(url: str, kind: str = "auto", *, options: DataConfig | None = None,
                image_size: int = 0) -> Corpus:  # fmt: skip
    """Open the corpus at ``url``; files are listed now (a bad URL fails here), read lazily."""
    options = options or DataConfig()
    if kind == "auto":
        kind = detect_kind(url)
    if kind not in KINDS:
        raise CorpusError(f"unknown corpus kind '{kind}' for {url} (use one of auto, {', '.join(KINDS)})")
    if kind == "imagefolder":
        fs, paths = imagefolder.list_classes(url)
    elif kind == "obelics":
        fs, paths = obelics.list_shards(url)
    else:
        fs, paths = list_files(url, _JSONL, "jsonl shards")
    shards = [source_name(fs, p, url) for p in paths]
    return Corpus(url=url, kind=kind, shards=shards, options=options, image_size=image_size, _fs=fs, _paths=paths)


def detect_kind(url: str) -> str:
    """The corpus kind of ``url`` from its file names, or from the first record of a jsonl file."""
    fs, path = fsspec.core.url_to_fs(url)
    if any(ch in path for ch in "*?["):
        files = sorted(p for p in fs.glob(path) if fs.isfile(p))
    elif fs.isfile(path):
        files = [path]
    elif fs.isdir(path):
        files = sorted(p for p in fs.find(path) if p.endswith((".parquet", *_JSONL)))
        if not files:
            entries = fs.ls(path, detail=True)
            if any(e["type"] == "directory" for e in entries):
                return "imagefolder"
    else:
        raise CorpusError(f"no corpus at {url}")
    if not files:
        raise CorpusError(f"no corpus files at {url} (expected .parquet, .jsonl, .jsonl.zip or class folders)")
    if any(f.endswith(".parquet") for f in files):
        return "obelics"
    jsonl = [f for f in files if f.endswith(_JSONL)]
    if not jsonl:
        raise CorpusError(f"cannot tell the corpus kind of {url} from {posixpath.basename(files[0])}")
    return _sniff_jsonl(fs, jsonl[0], source_name(fs, jsonl[0], url))


def _sniff_jsonl(fs: fsspec.AbstractFileSystem, path: str, source: str) -> str:
    for _, line in jsonl_lines(fs, path, source):
        try:
            record = parse_json_line(line)
        except SkipRow:
            continue  # a bad first line says nothing about the format
        if record is None:
            continue
        if "text_list" in record:
            return "mmc4"
        if "caption" in record:
            return "captions"
        raise CorpusError(f"{source}: records have neither MMC4's 'text_list' nor a 'caption' "
                          f"(keys: {', '.join(sorted(record)) or 'none'})")  # fmt: skip
    raise CorpusError(f"{source} holds no JSON records")


def read_documents(urls: str, *, kind: str = "auto", options: DataConfig | None = None, image_size: int = 0,
                   stats: ReadStats | None = None) -> Iterator[Document]:  # fmt: skip
    """Documents of one corpus or several comma-separated ones (a config's ``data.train_corpus``), in order.

    A drop-in for ``read_obelics`` in stages that just need documents (training the tokenizers);
    ``stats`` gathers what every corpus read and skipped.
    """
    corpora = [open_corpus(u.strip(), kind, options=options, image_size=image_size) for u in urls.split(",") if u.strip()]
    if not corpora:
        raise CorpusError(f"no corpus URL in '{urls}'")
    for corpus in corpora:
        corpus.stats = stats if stats is not None else corpus.stats
    return (doc for corpus in corpora for doc in corpus)  # opened now (a bad URL fails here), read lazily
