"""Write ``Document``s back as a corpus of a given kind, in a folder ``open_corpus`` reads again.

The inverse of the readers, for stages that rewrite a corpus (``data/curate.py``). Every kind becomes a folder:

- ``obelics``: ``shard-00000.parquet`` … (texts / images / metadata / general_metadata, images embedded PNG);
- ``mmc4``: ``docs_shard_0.jsonl`` with each image in ``images/`` and placed by ``matched_text_index`` (the
  text part that follows it; an image at the end gets an empty sentence after it);
- ``captions``: ``captions.jsonl`` with its images in ``captions/``;
- ``imagefolder``: one folder per ``label`` of the document metadata.

Images are re-encoded as PNG (the decoded pixels are what was curated; original bytes and formats are not
kept). Document metadata survives, less what the reader adds on every read (``content_hash``) and with the
reader's provenance kept as ``origin`` (source, row); a document's sampling probability (``SAMPLING_KEY``) goes where its kind's
reader finds it, and an ImageFolder, which has nowhere to keep it, refuses it. The folder is written under a temporary name and renamed
over ``out_dir`` when complete, so a reader never sees half a corpus.
"""

from __future__ import annotations

import io
import json
import os
import posixpath
from typing import Any, Iterable

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from mmgen.data.document import Document
from mmgen.data.reading import SAMPLING_KEY, CorpusError
from mmgen.data.shapes_world import OBELICS_SCHEMA, png_bytes

ROWS_PER_SHARD = 1000


def _metadata(doc: Document) -> dict[str, Any]:
    """Document metadata to write: provenance moves to ``origin`` (the reader stamps source and row anew)."""
    meta = {k: v for k, v in doc.metadata.items() if k not in ("content_hash", "source", "row")}
    if "source" in doc.metadata:
        meta["origin"] = {"source": doc.metadata["source"], "row": doc.metadata.get("row")}
    return meta


def _obelics(docs: list[Document], fs, root: str) -> None:
    for shard, start in enumerate(range(0, max(1, len(docs)), ROWS_PER_SHARD)):
        rows = []
        for doc in docs[start : start + ROWS_PER_SHARD]:
            images = iter(doc.image_metadata)
            rows.append({
                "texts": [p if isinstance(p, str) else None for p in doc.parts],
                "images": [None if isinstance(p, str) else png_bytes(p) for p in doc.parts],
                "metadata": json.dumps([None if isinstance(p, str) else next(images, {}) for p in doc.parts]),
                "general_metadata": json.dumps(_metadata(doc)),
            })  # fmt: skip
        buffer = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows, schema=OBELICS_SCHEMA), buffer)
        with fs.open(posixpath.join(root, f"shard-{shard:05d}.parquet"), "wb") as f:
            f.write(buffer.getvalue())


def _mmc4(docs: list[Document], fs, root: str) -> None:
    fs.makedirs(posixpath.join(root, "images"), exist_ok=True)
    lines = []
    for row, doc in enumerate(docs):
        texts: list[str] = []
        info: list[dict[str, Any]] = []
        waiting: list[dict[str, Any]] = []  # images placed before the next sentence
        meta = iter(doc.image_metadata)
        for part in doc.parts:
            if isinstance(part, str):
                for image in waiting:
                    image["matched_text_index"] = len(texts)
                texts.append(part)
                info += waiting
                waiting = []
                continue
            name = f"{row:06d}-{len(info) + len(waiting)}.png"
            with fs.open(posixpath.join(root, "images", name), "wb") as f:
                f.write(png_bytes(part))
            extra = {k: v for k, v in next(meta, {}).items() if k not in ("image_name", "matched_text_index", "raw_url")}
            waiting.append({**extra, "image_name": name})
        if waiting:  # images after the last sentence: MMC4 places an image before a sentence, so add an empty one
            for image in waiting:
                image["matched_text_index"] = len(texts)
            texts.append("")
            info += waiting
        lines.append(json.dumps({**_metadata(doc), "text_list": texts, "image_info": info}))
    with fs.open(posixpath.join(root, "docs_shard_0.jsonl"), "w") as f:
        f.write("".join(line + "\n" for line in lines))


def _captions(docs: list[Document], fs, root: str) -> None:
    fs.makedirs(posixpath.join(root, "captions"), exist_ok=True)
    lines = []
    for row, doc in enumerate(docs):
        relative = f"captions/{row:06d}.png"
        with fs.open(posixpath.join(root, relative), "wb") as f:
            f.write(png_bytes(doc.images[0]))
        metadata = doc.image_metadata[0] if doc.image_metadata else {}
        sampling = {SAMPLING_KEY: doc.metadata[SAMPLING_KEY]} if SAMPLING_KEY in doc.metadata else {}
        lines.append(json.dumps({"image": relative, "caption": " ".join(doc.texts), "metadata": metadata, **sampling}))
    with fs.open(posixpath.join(root, "captions.jsonl"), "w") as f:
        f.write("".join(line + "\n" for line in lines))


def _imagefolder(docs: list[Document], fs, root: str) -> None:
    if any(SAMPLING_KEY in doc.metadata for doc in docs):
        raise CorpusError("an ImageFolder corpus has no place for sampling probabilities (curate.concept_balance "
                          "'sample'): write it as caption pairs (data.corpus_kind captions) or use 'drop'")
    for row, doc in enumerate(docs):
        label = doc.metadata.get("label")
        if not isinstance(label, str) or not label or "/" in label:
            raise CorpusError(f"document {row} has no class label to file its image under")
        fs.makedirs(posixpath.join(root, label), exist_ok=True)
        with fs.open(posixpath.join(root, label, f"{row:06d}.png"), "wb") as f:
            f.write(png_bytes(doc.images[0]))


WRITERS = {"obelics": _obelics, "mmc4": _mmc4, "captions": _captions, "imagefolder": _imagefolder}


def write_corpus(docs: Iterable[Document], kind: str, out_dir: str) -> int:
    """Write ``docs`` as a ``kind`` corpus folder at ``out_dir`` (replacing it); returns the documents written.

    Caption-pair and ImageFolder documents hold one image each (a reader of those kinds yields no other)."""
    docs = list(docs)
    if kind in ("captions", "imagefolder") and any(len(d.images) != 1 for d in docs):
        raise CorpusError(f"a {kind} corpus holds one image per document; use obelics or mmc4 for interleaved ones")
    fs, root = fsspec.core.url_to_fs(out_dir)
    if fs.isfile(root):
        raise FileExistsError(f"output folder {out_dir} is a file")
    partial = f"{root.rstrip('/')}.{os.getpid()}.tmp"
    if fs.exists(partial):
        fs.rm(partial, recursive=True)
    fs.makedirs(partial, exist_ok=True)
    try:
        WRITERS[kind](docs, fs, partial)
        if fs.exists(root):
            fs.rm(root, recursive=True)
        fs.mv(partial, root, recursive=True)
    finally:
        if fs.exists(partial):
            fs.rm(partial, recursive=True)
    return len(docs)
