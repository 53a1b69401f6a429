"""Pretokenized token shards: what training reads instead of decoding images again.

A shard is two ``.npy`` files, memory-mappable on local disk: the tokens of all
its documents concatenated (uint16 when the vocabulary fits, else uint32) and
the document offsets (int64, ``n_docs + 1``). A ``.meta.jsonl`` sidecar keeps
each document's provenance (source shard and row) and image ground truth, and
the folder's ``manifest.json`` lists finished shards. Files are written under a
temporary name and renamed, so a reader never sees half a shard.
"""

from __future__ import annotations

import io
import json
import posixpath
from dataclasses import dataclass
from typing import Any, Iterable

import fsspec
import numpy as np


class TokenShardError(ValueError):
    """Token shards that are missing or inconsistent; the message names the folder."""


def _dtype_for(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= np.iinfo(np.uint16).max + 1 else np.dtype(np.uint32)


def _atomic_write(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    tmp = f"{path}.tmp"
    with fs.open(tmp, "wb") as f:
        f.write(data)
    fs.mv(tmp, path)


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


class TokenShardWriter:
    """Appends documents (token id lists) and rolls over to a new shard at ``tokens_per_shard``."""

    def __init__(self, folder: str, *, vocab_size: int, tokens_per_shard: int, start_index: int = 0):
        self.folder = folder
        self.fs, self.root = fsspec.core.url_to_fs(folder)
        self.fs.makedirs(self.root, exist_ok=True)
        self.dtype = _dtype_for(vocab_size)
        self.vocab_size = vocab_size
        self.tokens_per_shard = tokens_per_shard
        self.shard_index = start_index
        self.shards: list[dict[str, Any]] = []
        self._reset()

    def _reset(self) -> None:
        self._docs: list[np.ndarray] = []
        self._meta: list[dict[str, Any]] = []
        self._tokens = 0

    def add(self, ids: list[int], meta: dict[str, Any]) -> None:
        self._docs.append(np.asarray(ids, dtype=self.dtype))
        self._meta.append(meta)
        self._tokens += len(ids)
        if self._tokens >= self.tokens_per_shard:
            self.flush()

    def flush(self) -> None:
        if not self._docs:
            return
        name = f"shard-{self.shard_index:05d}"
        lengths = np.array([len(d) for d in self._docs], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        base = posixpath.join(self.root, name)
        meta = "".join(json.dumps(m) + "\n" for m in self._meta).encode()
        # tokens and meta land first; the index is renamed last and marks the shard finished
        _atomic_write(self.fs, base + ".tokens.npy", _npy_bytes(np.concatenate(self._docs)))
        _atomic_write(self.fs, base + ".meta.jsonl", meta)
        _atomic_write(self.fs, base + ".index.npy", _npy_bytes(offsets))
        self.shards.append({"name": name, "documents": len(self._docs), "tokens": int(offsets[-1])})
        self.shard_index += 1
        self._reset()

    def close(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        self.flush()
        manifest = {
            "vocab_size": self.vocab_size,
            "dtype": self.dtype.name,
            "shards": self.shards,
            "documents": sum(s["documents"] for s in self.shards),
            "tokens": sum(s["tokens"] for s in self.shards),
            **(extra or {}),
        }
        _atomic_write(self.fs, posixpath.join(self.root, "manifest.json"), json.dumps(manifest, indent=2).encode())
        return manifest


def _load_npy(fs: fsspec.AbstractFileSystem, path: str) -> np.ndarray:
    if isinstance(fs, fsspec.implementations.local.LocalFileSystem):
        return np.load(path, mmap_mode="r", allow_pickle=False)
    with fs.open(path, "rb") as f:
        return np.load(io.BytesIO(f.read()), allow_pickle=False)


@dataclass
class _Shard:
    tokens: np.ndarray
    offsets: np.ndarray
    meta_path: str


class TokenShards:
    """Read-only view of a token-shard folder: ``len``, ``[i]`` → token array, O(1) per document."""

    def __init__(self, folder: str):
        self.folder = folder
        self.fs, root = fsspec.core.url_to_fs(folder)
        manifest_path = posixpath.join(root, "manifest.json")
        if not self.fs.exists(manifest_path):
            raise TokenShardError(f"no token shards at {folder} (missing manifest.json; run tokenizers/encode.py)")
        with self.fs.open(manifest_path, "r") as f:
            self.manifest = json.load(f)
        self._shards = [
            _Shard(
                tokens=_load_npy(self.fs, posixpath.join(root, s["name"] + ".tokens.npy")),
                offsets=_load_npy(self.fs, posixpath.join(root, s["name"] + ".index.npy")),
                meta_path=posixpath.join(root, s["name"] + ".meta.jsonl"),
            )
            for s in self.manifest["shards"]
        ]
        counts = np.array([len(s.offsets) - 1 for s in self._shards], dtype=np.int64)
        self._starts = np.concatenate([[0], np.cumsum(counts)])
        self.lengths = np.concatenate([np.diff(s.offsets) for s in self._shards]) if self._shards else np.zeros(0, np.int64)
        self._meta_cache: dict[int, list[dict[str, Any]]] = {}

    def __len__(self) -> int:
        return int(self._starts[-1])

    def _locate(self, i: int) -> tuple[int, int]:
        if not 0 <= i < len(self):
            raise IndexError(i)
        shard = int(np.searchsorted(self._starts, i, side="right") - 1)
        return shard, i - int(self._starts[shard])

    def __getitem__(self, i: int) -> np.ndarray:
        shard, j = self._locate(i)
        s = self._shards[shard]
        return np.asarray(s.tokens[s.offsets[j] : s.offsets[j + 1]], dtype=np.int64)

    def metadata(self, i: int) -> dict[str, Any]:
        shard, j = self._locate(i)
        if shard not in self._meta_cache:
            with self.fs.open(self._shards[shard].meta_path, "r") as f:
                self._meta_cache[shard] = [json.loads(line) for line in f]
        return self._meta_cache[shard][j]

    def documents(self) -> Iterable[np.ndarray]:
        for i in range(len(self)):
            yield self[i]
