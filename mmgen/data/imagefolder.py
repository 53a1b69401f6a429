"""Read an ImageFolder (one sub-folder per class) into caption documents.

Every image ``<root>/<label>/…/<file>`` becomes a document of a caption made from
``data.caption_template`` (e.g. ``"a photo of a {label}"``, underscores in the folder name read as
spaces) and the image, in ``data.caption_order``. The label is kept in the document and image metadata
(``label``, ``label_index``), so generative classification can score every class. Each class folder is
one shard (the unit encode splits across ranks); its rows are its image files in sorted path order.
"""

from __future__ import annotations

import posixpath
from typing import Iterator

import fsspec

from mmgen.data.caption_pairs import in_caption_order
from mmgen.data.curation import Curator, ImageItem, Parsed
from mmgen.data.document import Document
from mmgen.data.reading import CorpusError, ReadStats

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


def list_classes(url: str) -> tuple[fsspec.AbstractFileSystem, list[str]]:
    """The class folders under ``url``, sorted by name; a folder with none is a ``CorpusError``."""
    fs, root = fsspec.core.url_to_fs(url)
    if not fs.isdir(root):
        raise CorpusError(f"no ImageFolder at {url} (not a folder)")
    classes = sorted(p["name"] for p in fs.ls(root, detail=True) if p["type"] == "directory")
    if not classes:
        raise CorpusError(f"no class folders in ImageFolder {url}")
    return fs, classes


def class_label(class_dir: str) -> str:
    return posixpath.basename(class_dir.rstrip("/"))


def read_shard(fs: fsspec.AbstractFileSystem, class_dir: str, source: str, curator: Curator, stats: ReadStats,
               *, label_index: int = -1) -> Iterator[Document]:  # fmt: skip
    label = class_label(class_dir)
    text = curator.options.caption_template.format(label=label.replace("_", " "))
    files = sorted(p for p in fs.find(class_dir) if p.lower().endswith(IMAGE_SUFFIXES))
    refs = curator.refs(fs, class_dir)
    meta = {"label": label, "label_index": label_index}

    def parse(row: int, path: str) -> Parsed:
        image = ImageItem(ref=posixpath.relpath(path, class_dir), metadata=dict(meta))
        items = in_caption_order(text, image, curator.options.caption_order, row)
        return items, {**meta, "path": posixpath.relpath(path, posixpath.dirname(class_dir))}

    yield from curator.documents(enumerate(files), parse, refs, source, stats)
