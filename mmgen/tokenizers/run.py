"""The multimodal tokenizer of a run folder, as tokenizers/encode.py (or an import) left it.

Every stage after encoding (SFT encoding, sampling, classification, the
report, the SFT comparison, the trainer) reads the same three things through
this module: the joint vocabulary, the text tokenizer and the VQ-VAE.

The text tokenizer is a choice recorded in ``tokenizers/text_tokenizer.json``
(``{"kind": ..., "file": ...}``, the file relative to ``tokenizers/``):
``sentencepiece`` (mmgen's own, trained by tokenizers/train_text.py) or
``huggingface`` (a ``tokenizer.json``, as an imported Chameleon checkpoint
ships). A run without the record holds SentencePiece's ``tokenizers/text.model``.
"""

from __future__ import annotations

import json
import posixpath

import fsspec
import torch

from mmgen.config.paths import RunPaths
from mmgen.files import write_json
from mmgen.tokenizers.hf_text import HFTextTokenizer
from mmgen.tokenizers.image import ImageTokenizer
from mmgen.tokenizers.text import TextTokenizer
from mmgen.tokenizers.vocab import MultimodalTokenizer, Vocab

SENTENCEPIECE, HUGGINGFACE = "sentencepiece", "huggingface"
TEXT_KINDS = (SENTENCEPIECE, HUGGINGFACE)


def text_tokenizer_record(paths: RunPaths) -> dict:
    """``{"kind", "file"}`` of the run's text tokenizer (the default when the run has no record)."""
    fs, local = fsspec.core.url_to_fs(paths.text_tokenizer_record)
    if not fs.exists(local):
        return {"kind": SENTENCEPIECE, "file": posixpath.basename(paths.text_tokenizer)}
    with fs.open(local, "r") as f:
        record = json.load(f)
    if record.get("kind") not in TEXT_KINDS or not record.get("file"):
        raise FileNotFoundError(f"{paths.text_tokenizer_record} names no text tokenizer of a known kind ({', '.join(TEXT_KINDS)})")
    return record


def write_text_tokenizer_record(tokenizers_dir: str, kind: str, file: str) -> None:
    """Record which text tokenizer ``tokenizers_dir`` holds (written aside, then renamed)."""
    if kind not in TEXT_KINDS:
        raise ValueError(f"unknown text tokenizer kind {kind!r}")
    path = posixpath.join(tokenizers_dir, posixpath.basename(RunPaths("").text_tokenizer_record))
    write_json(path, {"kind": kind, "file": file})


def load_text_tokenizer(paths: RunPaths, vocab: Vocab | None = None) -> TextTokenizer | HFTextTokenizer:
    """The run's text tokenizer, whichever kind it recorded; ``vocab`` (default: the run's) places HF ids."""
    record = text_tokenizer_record(paths)
    path = posixpath.join(posixpath.dirname(paths.text_tokenizer), record["file"])
    fs, local = fsspec.core.url_to_fs(path)
    if not fs.exists(local):
        hint = "tokenizers/train_text.py" if record["kind"] == SENTENCEPIECE else "train/convert_chameleon.py import"
        raise FileNotFoundError(f"missing input {path} (the run's text tokenizer; run {hint} first)")
    if record["kind"] == SENTENCEPIECE:
        return TextTokenizer.load(path)
    vocab = vocab or Vocab.load(paths.vocab)
    return HFTextTokenizer.load(path, id_offset=vocab.text_offset, pieces=vocab.text_size)


def load_run_tokenizer(paths: RunPaths, device: torch.device | str = "cpu") -> MultimodalTokenizer:
    """Vocabulary, text tokenizer and image tokenizer (on ``device``) of the run at ``paths``."""
    vocab = Vocab.load(paths.vocab)
    return MultimodalTokenizer(vocab, load_text_tokenizer(paths, vocab), ImageTokenizer.load(paths.image_tokenizer, device=device))
