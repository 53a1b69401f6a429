"""Pretokenized token shards: what training reads instead of decoding images again.

A shard ``<name>`` is a few files, each memory-mappable ``.npy`` on local disk:

- ``<name>.tokens.npy``   all its documents' tokens concatenated (uint16 when the vocabulary fits, else uint32)
- ``<name>.modality.npy`` one uint8 per token: 0 special, 1 text, 2 image code (for users; the loss derives
  modality from vocabulary ranges itself)
- ``<name>.docs.npy``     int64 ``[n_docs, 3]``: source index (into the manifest's ``sources``), row in that
  source, and a content hash (0: none) used to find duplicates across shards
- ``<name>.meta.jsonl``   per document: provenance and image ground truth, JSON
- ``<name>.index.npy``    the document offsets (int64, ``n_docs + 1``), so document ``i`` is O(1)
- ``<name>.sampling.npy`` (only when a document has one; its manifest entry then says ``"sampling": true``)
  float32 per document: its chance to be drawn in one pass of the loader (``SAMPLING_KEY``), 1 for the others

Every file is written under a temporary name and renamed, the index last: a shard without its index is
unfinished and never listed. The folder's ``manifest.json`` lists finished shards in order and is written
last of all; ``duplicates.npy`` (when present) holds the indices of documents whose content hash appeared
at a smaller index, which the loader leaves out. A *mixture* folder's manifest instead lists component
folders with their token weights; ``TokenShards`` then reads the components back to back.
"""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import fsspec
import numpy as np

from mmgen.data.reading import SAMPLING_KEY
from mmgen.files import CorruptFileError, reading, write_atomic

SPECIAL, TEXT, IMAGE = 0, 1, 2
DUPLICATES_FILE = "duplicates.npy"


class TokenShardError(CorruptFileError):
    """Token shards that are missing or inconsistent; the message names the folder."""


def _dtype_for(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= np.iinfo(np.uint16).max + 1 else np.dtype(np.uint32)


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def modality_of(tokens: np.ndarray, text_range: tuple[int, int], image_range: tuple[int, int]) -> np.ndarray:
    """uint8 modality per token: 0 special, 1 text, 2 image code."""
    modality = np.zeros(len(tokens), dtype=np.uint8)
    modality[(tokens >= text_range[0]) & (tokens < text_range[1])] = TEXT
    modality[(tokens >= image_range[0]) & (tokens < image_range[1])] = IMAGE
    return modality


class TokenShardWriter:
    """Appends documents (token id lists) and rolls over to a new shard at ``tokens_per_shard``.

    ``vocab`` (a ``Vocab``) enables the modality array; ``sources`` fixes the source table up front (so
    writers of different ranks agree on indices), else sources are numbered as they first appear.
    """

    def __init__(self, folder: str, *, vocab_size: int, tokens_per_shard: int, start_index: int = 0,
                 name_prefix: str = "shard", vocab: Any = None, sources: Sequence[str] | None = None):  # fmt: skip
        self.folder = folder
        self.fs, self.root = fsspec.core.url_to_fs(folder)
        self.fs.makedirs(self.root, exist_ok=True)
        self.dtype = _dtype_for(vocab_size)
        self.vocab_size = vocab_size
        self.vocab = vocab
        self.tokens_per_shard = tokens_per_shard
        self.name_prefix = name_prefix
        self.shard_index = start_index
        self.shards: list[dict[str, Any]] = []
        self.sources: list[str] = list(sources or [])
        self._source_ids = {s: i for i, s in enumerate(self.sources)}
        self._reset()

    def _reset(self) -> None:
        self._docs: list[np.ndarray] = []
        self._meta: list[dict[str, Any]] = []
        self._rows: list[tuple[int, int, int]] = []
        self._sampling: list[float] = []
        self._tokens = 0

    def add(self, ids: Sequence[int], meta: dict[str, Any], *, content_hash: int = 0) -> None:
        """One document; ``meta['source']`` / ``meta['row']`` (when present) are its provenance."""
        source, row = meta.get("source"), meta.get("row")
        source_id = -1
        if source is not None:
            source_id = self._source_ids.setdefault(str(source), len(self._source_ids))
            if source_id == len(self.sources):
                self.sources.append(str(source))
        self._docs.append(np.asarray(ids, dtype=self.dtype))
        self._meta.append(meta)
        self._rows.append((source_id, -1 if row is None else int(row), int(content_hash)))
        self._sampling.append(float(meta.get(SAMPLING_KEY, 1.0)))
        self._tokens += len(ids)
        if self._tokens >= self.tokens_per_shard:
            self.flush()

    def flush(self) -> None:
        if not self._docs:
            return
        name = f"{self.name_prefix}-{self.shard_index:05d}"
        lengths = np.array([len(d) for d in self._docs], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        tokens = np.concatenate(self._docs)
        base = posixpath.join(self.root, name)
        meta = "".join(json.dumps(m, sort_keys=True) + "\n" for m in self._meta).encode()
        write_atomic(base + ".tokens.npy", npy_bytes(tokens), self.fs)
        if self.vocab is not None:
            write_atomic(base + ".modality.npy",
                         npy_bytes(modality_of(tokens, self.vocab.text_range, self.vocab.image_range)), self.fs)  # fmt: skip
        write_atomic(base + ".docs.npy", npy_bytes(np.array(self._rows, dtype=np.int64).reshape(-1, 3)), self.fs)
        write_atomic(base + ".meta.jsonl", meta, self.fs)
        entry = {"name": name, "documents": len(self._docs), "tokens": int(offsets[-1])}
        if any(p != 1.0 for p in self._sampling):
            write_atomic(base + ".sampling.npy", npy_bytes(np.array(self._sampling, dtype=np.float32)), self.fs)
            entry["sampling"] = True
        write_atomic(base + ".index.npy", npy_bytes(offsets), self.fs)  # last: marks the shard finished
        self.shards.append(entry)
        self.shard_index += 1
        self._reset()

    def finish(self) -> list[dict[str, Any]]:
        """Flush and return the shard entries, without a manifest (the caller writes one for many writers)."""
        self.flush()
        return self.shards

    def close(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        self.flush()
        return write_manifest(self.folder, self.shards, vocab_size=self.vocab_size, sources=self.sources,
                              extra=extra)  # fmt: skip


def write_manifest(folder: str, shards: list[dict[str, Any]], *, vocab_size: int, sources: Sequence[str] = (),
                   extra: dict[str, Any] | None = None, dedup: bool = False) -> dict[str, Any]:  # fmt: skip
    """List finished shards in ``folder`` (and, with ``dedup``, mark cross-shard duplicates); returns it."""
    fs, root = fsspec.core.url_to_fs(folder)
    manifest = {
        "vocab_size": vocab_size,
        "dtype": _dtype_for(vocab_size).name,
        "shards": shards,
        "documents": sum(s["documents"] for s in shards),
        "tokens": sum(s["tokens"] for s in shards),
        "sources": list(sources),
        **(extra or {}),
    }
    if dedup:
        duplicates = _duplicates(fs, root, shards)
        manifest["duplicates"] = len(duplicates)
        write_atomic(posixpath.join(root, DUPLICATES_FILE), npy_bytes(duplicates), fs)
    write_atomic(posixpath.join(root, "manifest.json"), json.dumps(manifest, indent=2).encode(), fs)
    return manifest


def _duplicates(fs: fsspec.AbstractFileSystem, root: str, shards: list[dict[str, Any]]) -> np.ndarray:
    hashes = [_load_npy(fs, posixpath.join(root, s["name"] + ".docs.npy"))[:, 2] for s in shards]
    hashes = np.concatenate(hashes) if hashes else np.zeros(0, np.int64)
    _, first = np.unique(hashes, return_index=True)
    is_first = np.zeros(len(hashes), dtype=bool)
    is_first[first] = True
    return np.flatnonzero(~is_first & (hashes != 0)).astype(np.int64)


def _load_npy(fs: fsspec.AbstractFileSystem, path: str) -> np.ndarray:
    if isinstance(fs, fsspec.implementations.local.LocalFileSystem):
        return np.load(path, mmap_mode="r", allow_pickle=False)
    with fs.open(path, "rb") as f:
        return np.load(io.BytesIO(f.read()), allow_pickle=False)


@dataclass
class _Shard:
    tokens: np.ndarray
    offsets: np.ndarray
    base: str


class TokenShards:
    """Read-only view of a token-shard folder: ``len``, ``[i]`` → token array, O(1) per document.

    A mixture folder reads as its components back to back; ``components`` gives each with its weight.
    """

    def __init__(self, folder: str):
        self.folder = folder
        self.fs, root = fsspec.core.url_to_fs(folder)
        manifest_path = posixpath.join(root, "manifest.json")
        if not self.fs.exists(manifest_path):
            raise TokenShardError(f"no token shards at {folder} (missing manifest.json; run tokenizers/encode.py)")
        with self.fs.open(manifest_path, "r") as f, reading(posixpath.join(folder, "manifest.json"), "token-shard manifest"):
            self.manifest = json.load(f)
            if not isinstance(self.manifest, dict) or not isinstance(self.manifest.get("mixture", self.manifest.get("shards")), list):
                raise ValueError("it lists neither shards nor a mixture")
        self.components: list[tuple[TokenShards, float]] = []
        self._shards: list[_Shard] = []
        if "mixture" in self.manifest:
            self.components = [(TokenShards(posixpath.join(folder, c["folder"])), float(c["weight"]))
                               for c in self.manifest["mixture"]]  # fmt: skip
            counts = [len(c) for c, _ in self.components]
            self.lengths = np.concatenate([c.lengths for c, _ in self.components])
            self.duplicates = np.concatenate(
                [c.duplicates + start for (c, _), start in zip(self.components, np.cumsum([0, *counts[:-1]]))]
            ).astype(np.int64)
        else:
            self.components = [(self, 1.0)]
            self._shards = [self._open_shard(root, s["name"]) for s in self.manifest["shards"]]
            counts = [len(s.offsets) - 1 for s in self._shards]
            self.lengths = np.concatenate([np.diff(s.offsets) for s in self._shards]) if self._shards else np.zeros(0, np.int64)
            dup_path = posixpath.join(root, DUPLICATES_FILE)
            with reading(posixpath.join(folder, DUPLICATES_FILE), "duplicate list"):
                self.duplicates = (np.asarray(_load_npy(self.fs, dup_path), dtype=np.int64) if self.fs.exists(dup_path)
                                   else np.zeros(0, np.int64))  # fmt: skip
                if ((self.duplicates < 0) | (self.duplicates >= sum(counts))).any():
                    raise ValueError("it lists documents the shards do not hold")
        self._starts = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]).astype(np.int64)
        self._cache: dict[tuple[int, str], Any] = {}

    def _open_shard(self, root: str, name: str) -> _Shard:
        base = posixpath.join(root, name)
        with reading(posixpath.join(self.folder, name + ".*.npy"), "token shard"):
            tokens, offsets = _load_npy(self.fs, base + ".tokens.npy"), _load_npy(self.fs, base + ".index.npy")
            # a torn or mismatched pair would hand out garbage documents later: check the index against the tokens
            if offsets.ndim != 1 or len(offsets) < 1 or offsets[0] != 0 or offsets[-1] != len(tokens) or (np.diff(offsets) < 0).any():
                raise ValueError(f"its index does not match its {len(tokens)} tokens")
        return _Shard(tokens=tokens, offsets=offsets, base=base)

    def __len__(self) -> int:
        return int(self._starts[-1])

    @property
    def is_mixture(self) -> bool:
        return "mixture" in self.manifest

    def kept_indices(self) -> np.ndarray:
        """Indices of the documents to train on: all but cross-shard duplicates."""
        keep = np.ones(len(self), dtype=bool)
        keep[self.duplicates] = False
        return np.flatnonzero(keep)

    def sampling_probabilities(self) -> np.ndarray | None:
        """Each document's chance to be drawn in one pass of the loader (float64, ``len(self)``), or None when
        every document's is 1 (no shard of the folder, or of any mixture component, has a sampling file)."""
        if self.is_mixture:
            parts = [c.sampling_probabilities() for c, _ in self.components]
            if all(p is None for p in parts):
                return None
            return np.concatenate([np.ones(len(c)) if p is None else p for (c, _), p in zip(self.components, parts)])
        entries = self.manifest["shards"]
        if not any(e.get("sampling") for e in entries):
            return None
        parts = []
        for k, (entry, shard) in enumerate(zip(entries, self._shards)):
            n = len(shard.offsets) - 1
            if not entry.get("sampling"):
                parts.append(np.ones(n))
                continue
            with reading(shard.base + ".sampling.npy", "token-shard sampling file"):
                p = np.asarray(self._side(k, ".sampling.npy"), dtype=np.float64)
                if p.shape != (n,) or not ((p > 0) & (p <= 1)).all():
                    raise ValueError(f"it needs {n} probabilities in (0, 1], one per document")
            parts.append(p)
        return np.concatenate(parts)

    def _locate(self, i: int) -> tuple[int, int]:
        if not 0 <= i < len(self):
            raise IndexError(i)
        part = int(np.searchsorted(self._starts, i, side="right") - 1)
        return part, i - int(self._starts[part])

    def __getitem__(self, i: int) -> np.ndarray:
        part, j = self._locate(i)
        if self.is_mixture:
            return self.components[part][0][j]
        s = self._shards[part]
        return np.asarray(s.tokens[s.offsets[j] : s.offsets[j + 1]], dtype=np.int64)

    def _side(self, shard: int, suffix: str) -> Any:
        key = (shard, suffix)
        if key not in self._cache:
            path = self._shards[shard].base + suffix
            if not self.fs.exists(path):
                raise TokenShardError(f"{self.folder}: {posixpath.basename(path)} is missing (written by an older encode?)")
            with reading(path, "token-shard side file"):
                if suffix.endswith(".jsonl"):
                    with self.fs.open(path, "r") as f:
                        self._cache[key] = [json.loads(line) for line in f]
                else:
                    self._cache[key] = _load_npy(self.fs, path)
        return self._cache[key]

    def metadata(self, i: int) -> dict[str, Any]:
        part, j = self._locate(i)
        if self.is_mixture:
            return self.components[part][0].metadata(j)
        return self._side(part, ".meta.jsonl")[j]

    def modality(self, i: int) -> np.ndarray:
        """uint8 per token of document ``i``: 0 special, 1 text, 2 image code."""
        part, j = self._locate(i)
        if self.is_mixture:
            return self.components[part][0].modality(j)
        s = self._shards[part]
        return np.asarray(self._side(part, ".modality.npy")[s.offsets[j] : s.offsets[j + 1]])

    def provenance(self, i: int) -> tuple[str | None, int]:
        """(source shard, row) document ``i`` was read from."""
        part, j = self._locate(i)
        if self.is_mixture:
            return self.components[part][0].provenance(j)
        source, row, _ = (int(v) for v in self._side(part, ".docs.npy")[j])
        sources = self.manifest.get("sources", [])
        return (sources[source] if 0 <= source < len(sources) else None), row

    def documents(self) -> Iterable[np.ndarray]:
        for i in range(len(self)):
            yield self[i]

    def fingerprint(self) -> str:
        """A hash of every document's tokens, in order: what a table indexed by document (the retrieval
        neighbours) was built on. Reads all tokens once (a linear pass, about a second per GB)."""
        h = hashlib.blake2b(digest_size=16)
        for folder, _ in self.components:
            for shard in folder._shards:
                for array in (shard.offsets, shard.tokens):
                    array = np.ascontiguousarray(array)  # a memory map already is: no copy
                    h.update(f"{array.dtype.str}{array.shape}".encode())
                    h.update(array.data)
        return h.hexdigest()


def write_mixture(folder: str, components: list[dict[str, Any]], extra: dict[str, Any] | None = None) -> dict:
    """A mixture manifest: ``components`` are ``{"folder": relative name, "weight": float, ...}``."""
    fs, root = fsspec.core.url_to_fs(folder)
    fs.makedirs(root, exist_ok=True)
    manifest = {"mixture": components, **(extra or {})}
    write_atomic(posixpath.join(root, "manifest.json"), json.dumps(manifest, indent=2).encode(), fs)
    return manifest
