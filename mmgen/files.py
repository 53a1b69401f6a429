"""Writing run-folder outputs so that a reader never sees half a file.

Every output goes to a temporary name beside its target and is renamed over it only once it is complete: a
run killed mid-write (kill -9, a full disk, Ctrl-C) leaves either the old file or the new one, never a torn
one. The temporary name carries the process id, so two processes writing the same target never share one, and
a failed write removes its temporary file. Works for any fsspec URL (on object stores the rename is a copy).
"""

from __future__ import annotations

import json
import os
import pickle
import posixpath
import zipfile
import zlib
from contextlib import contextmanager
from typing import Any, Iterator

import fsspec


class CorruptFileError(ValueError):
    """A file of a run folder that exists but cannot be read as what it should be; the message names it."""


# what parsers raise on bytes that are not what they expect (JSON, npy, safetensors, pickle, zip, protobuf ...)
_DECODE_ERRORS = (ValueError, KeyError, TypeError, IndexError, EOFError, UnicodeDecodeError, AttributeError,
                  RuntimeError, zlib.error, zipfile.BadZipFile, pickle.UnpicklingError)


@contextmanager
def reading(path: str, what: str, also: tuple[type[BaseException], ...] = ()) -> Iterator[None]:
    """Turn a parser's failure on ``path`` into one CorruptFileError naming the file and what it should hold.

    ``also``: further exception types the parser raises (torch's DCP raises a BaseException). A missing file
    stays FileNotFoundError and an error already naming its file passes through unchanged.
    """
    try:
        yield
    except CorruptFileError:
        raise
    except (*_DECODE_ERRORS, *also) as err:
        text = str(err)
        if "Traceback (most recent call last)" in text:  # a failure wrapped with its traceback (DCP): keep what went wrong
            text = [line for line in text.splitlines() if line.strip()][-1]
        detail = " ".join(text.split())[:200] or type(err).__name__
        raise CorruptFileError(f"{path} is not a readable {what} (truncated or corrupt?): {detail}") from err


def _temporary_name(local: str) -> str:
    return f"{local}.{os.getpid()}.tmp"


def write_atomic(path: str, data: bytes | str, fs: fsspec.AbstractFileSystem | None = None) -> None:
    """Write ``data`` (bytes, or text as UTF-8) to ``path``, creating its folder; ``path`` is absent, old or complete.

    ``path`` is a URL, or a path on ``fs`` when a caller already holds the file system.
    """
    if fs is None:
        fs, local = fsspec.core.url_to_fs(path)
    else:
        local = path
    parent = posixpath.dirname(local)
    if parent:
        fs.makedirs(parent, exist_ok=True)
    tmp = _temporary_name(local)
    payload = data.encode() if isinstance(data, str) else data
    try:
        with fs.open(tmp, "wb") as f:
            f.write(payload)
        fs.mv(tmp, local)
    except BaseException:
        if fs.exists(tmp):
            fs.rm(tmp)
        raise


def write_json(path: str, obj: Any, *, indent: int | None = 2) -> None:
    """``obj`` as JSON at ``path``, written atomically."""
    write_atomic(path, json.dumps(obj, indent=indent) + "\n")


def exists(path: str) -> bool:
    """Whether a file or folder is at ``path`` (any fsspec URL)."""
    fs, local = fsspec.core.url_to_fs(path)
    return fs.exists(local)


def read_jsonl(path: str) -> list[Any]:
    """The records of an append-only JSONL log; a torn last line (a write cut off by a kill) is left out."""
    fs, local = fsspec.core.url_to_fs(path)
    with fs.open(local, "r") as f:
        lines = [line for line in f.read().split("\n") if line.strip()]
    records = []
    for i, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i < len(lines) - 1:
                raise ValueError(f"{path}: line {i + 1} is not JSON") from None
    return records


def append_jsonl(path: str, record: Any) -> None:
    """One record as one line, in one write (appends of whole lines never interleave)."""
    fs, local = fsspec.core.url_to_fs(path)
    with fs.open(local, "a") as f:
        f.write(json.dumps(record) + "\n")
