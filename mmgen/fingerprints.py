"""Fingerprints of a stage's inputs, recorded with its outputs, so a later stage can tell they belong together.

encode records, in every token folder's manifest (``inputs``), the fingerprints of the vocabulary, text
tokenizer and VQ tokenizer it encoded with. Pretraining and SFT compare them with the run's files before
any process starts: tokens encoded with another vocabulary, or a tokenizer retrained after encode, stop the
run with one line naming both. (A checkpoint of another model shape is caught where it is loaded:
``mmgen.train.checkpointing``.)
"""

from __future__ import annotations

import json
import posixpath

import fsspec

from mmgen.config import RunPaths
from mmgen.config.paths import StaleInputError
from mmgen.data.curation import content_hash
from mmgen.tokenizers.image import CONFIG_FILE, WEIGHTS_FILE
from mmgen.tokenizers.vocab import Vocab


def fingerprint(*chunks: bytes) -> str:
    return f"{content_hash(*chunks):016x}"


def _read(path: str) -> bytes:
    fs, local = fsspec.core.url_to_fs(path)
    return fs.cat_file(local)


def vocab_fingerprint(vocab: Vocab) -> str:
    # of the content, not the file's bytes: encode's other ranks fingerprint it before rank 0 has written it
    return fingerprint(json.dumps(vocab.to_dict(), sort_keys=True).encode())


def tokenizer_fingerprints(paths: RunPaths, vocab: Vocab | None = None) -> dict[str, str]:
    """The fingerprints of the run's vocabulary, text tokenizer and VQ tokenizer (as their files are now)."""
    image = paths.image_tokenizer
    return {
        "vocab": vocab_fingerprint(vocab if vocab is not None else Vocab.load(paths.vocab)),
        "text_tokenizer": fingerprint(_read(paths.text_tokenizer)),
        "image_tokenizer": fingerprint(_read(posixpath.join(image, WEIGHTS_FILE)), _read(posixpath.join(image, CONFIG_FILE))),
    }


def check_tokens_inputs(manifest: dict, tokens: str, paths: RunPaths) -> None:
    """``tokens`` (a token folder, its ``manifest``) was encoded with the run's present tokenizers.

    A folder encoded before fingerprints were recorded passes unchecked.
    """
    recorded = manifest.get("inputs") or {}
    if not recorded:
        return
    now = tokenizer_fingerprints(paths)
    where = {"vocab": paths.vocab, "text_tokenizer": paths.text_tokenizer, "image_tokenizer": paths.image_tokenizer}
    for name, value in now.items():
        if recorded.get(name, value) != value:
            raise StaleInputError(f"{tokens} was encoded with another {name.replace('_', ' ')} than {where[name]} "
                                  f"holds now (fingerprint {recorded[name]} at encode, {value} now): "
                                  f"run tokenizers/encode.py again, or restore the {name.replace('_', ' ')}")  # fmt: skip
