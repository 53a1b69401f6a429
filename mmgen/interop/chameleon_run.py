"""A Hugging Face Chameleon (or Anole) checkpoint imported as a complete mmgen run folder.

Everything the later stages read is written, so sampling, classification,
SFT encoding and fine-tuning, and export run on the folder unchanged:

- ``tokenizers/vocab.json``: Chameleon's vocabulary layout (``Vocab``), with
  mmgen's extra roles (SFT task tokens, CM3 sentinels) on free reserved tokens;
- ``tokenizers/tokenizer.json`` and the record ``tokenizers/text_tokenizer.json``
  (kind ``huggingface``): the checkpoint's BPE text tokenizer;
- ``tokenizers/image/``: the VQ-VAE as an ``ImageTokenizer`` (512-pixel images
  in Meta's release, ``x / 127.5 - 1``, a 32×32 code grid), with the decoder
  when its VQGAN weights are given (Hugging Face ships the encoder only);
- ``pretrain/model.json`` and ``pretrain/checkpoint/step-0``: the decoder;
- ``chameleon/``: what an export needs to write a complete checkpoint again —
  the source's ``config.json``, its ``model.vqmodel.*`` tensors and its
  tokenizer and processor files.

Every input is read and checked before anything is written; the folder is
assembled under a temporary name next to the target and renamed into place,
so a failure leaves nothing half-written. A target that already holds files is
refused unless ``replace`` is set.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from typing import Callable

import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import save_file

from mmgen.config.paths import RunPaths
from mmgen.interop.chameleon_vqvae import HF_PREFIX, import_chameleon_vqvae
from mmgen.interop.hf_chameleon import CONFIG_FILE, EXTRA_FILES, WEIGHTS_FILE, _Shards, load_chameleon
from mmgen.model.checkpoint import save_model_description
from mmgen.tokenizers.hf_text import HFTextTokenizer
from mmgen.tokenizers.run import HUGGINGFACE, write_text_tokenizer_record

TOKENIZER_FILE = "tokenizer.json"
EXTRAS_FOLDER = "chameleon"


class TargetNotEmpty(ValueError):
    """The import target already holds files and replacing them was not asked for."""


def extras_dir(run_dir: str) -> str:
    """The folder of an imported run that holds the source's VQ-VAE tensors, config and tokenizer files."""
    return os.path.join(run_dir, EXTRAS_FOLDER)


def _text_tokenizer(hf_dir: str, vocab) -> HFTextTokenizer:
    path = os.path.join(hf_dir, TOKENIZER_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"missing input {path} (the checkpoint's text tokenizer)")
    with open(path, "rb") as f:
        text = HFTextTokenizer(tokenizer_json=f.read(), id_offset=vocab.text_offset, pieces=vocab.text_size)
    if text.highest_id >= vocab.size:
        raise ValueError(f"{path} has ids up to {text.highest_id}, the model only {vocab.size} embedding rows")
    for role, piece in vocab.special_pieces.items():  # the tokenizer and config.json must agree on the layout
        token_id = text.token_id(piece)
        if token_id is not None and token_id != vocab.specials[role]:
            raise ValueError(f"{path} gives {piece!r} id {token_id}, config.json's vocabulary_map {vocab.specials[role]}")
    return text


def _check_target(run_dir: str, hf_dir: str, replace: bool) -> None:
    source = os.path.realpath(hf_dir)
    if os.path.commonpath([os.path.realpath(run_dir), source]) in (source, os.path.realpath(run_dir)):
        raise TargetNotEmpty(f"the run folder {run_dir} and the checkpoint {hf_dir} must not contain one another")
    if os.path.isfile(run_dir):
        raise TargetNotEmpty(f"{run_dir} is a file, not a run folder")
    if os.path.isdir(run_dir) and os.listdir(run_dir) and not replace:
        raise TargetNotEmpty(f"{run_dir} already holds files (another run?); pass --replace to overwrite it")


def import_chameleon_run(
    hf_dir: str,
    run_dir: str,
    *,
    decoder_weights: str | None = None,
    replace: bool = False,
    dtype: torch.dtype = torch.float32,
    checkpoint_folder: str = "checkpoint",
    log: Callable[[str], None] = print,
) -> dict:
    """Write the run folder ``run_dir`` for the checkpoint ``hf_dir``; returns a summary of what it holds."""
    run_dir = os.path.abspath(run_dir)
    _check_target(run_dir, hf_dir, replace)  # before the (possibly long) reads
    model, vocab = load_chameleon(hf_dir, dtype=dtype)
    text = _text_tokenizer(hf_dir, vocab)
    image = import_chameleon_vqvae(hf_dir, decoder_weights=decoder_weights)
    if tuple(image.grid) != vocab.grid or image.codebook_size != vocab.image_size:
        raise ValueError(f"the VQ-VAE (codebook {image.codebook_size}, grid {tuple(image.grid)}) does not fit the "
                         f"vocabulary (image ids {vocab.image_size}, grid {vocab.grid})")
    has_decoder = image.model.decoder is not None
    shards = _Shards(hf_dir)
    vq_tensors = {k: shards(k).contiguous() for k in shards.keys() if k.startswith(HF_PREFIX)}

    parent = os.path.dirname(run_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-import-", dir=parent)
    try:
        paths = RunPaths(tmp)
        vocab.save(paths.vocab)
        text.save(os.path.join(os.path.dirname(paths.vocab), TOKENIZER_FILE))
        write_text_tokenizer_record(os.path.dirname(paths.vocab), HUGGINGFACE, TOKENIZER_FILE)
        image.save(paths.image_tokenizer)
        with warnings.catch_warnings():  # DCP warns that it saves from one process, which is the intent
            warnings.simplefilter("ignore", UserWarning)
            dcp.save(model.state_dict(), checkpoint_id=os.path.join(paths.pretrain_dir, checkpoint_folder, "step-0"),
                     no_dist=True)
        save_model_description(paths.pretrain_dir, model.cfg, vocab.size)
        extras = extras_dir(tmp)
        os.makedirs(extras)
        shutil.copyfile(os.path.join(hf_dir, CONFIG_FILE), os.path.join(extras, CONFIG_FILE))
        save_file(vq_tensors, os.path.join(extras, WEIGHTS_FILE), metadata={"format": "pt"})
        for name in EXTRA_FILES:
            if os.path.exists(os.path.join(hf_dir, name)):
                shutil.copyfile(os.path.join(hf_dir, name), os.path.join(extras, name))
        _move_into_place(tmp, run_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if not has_decoder:
        log("note: no VQ-VAE decoder weights (--vq_decoder): sampled images are saved as codes and cannot be rendered")
    return {"parameters": model.num_params(), "vocab_size": vocab.size, "grid": vocab.grid,
            "text_pieces": vocab.text_size, "image_decoder": has_decoder}


def _move_into_place(tmp: str, run_dir: str) -> None:
    """Rename the finished folder onto ``run_dir``; an old run there is set aside first and removed after."""
    old = None
    if os.path.exists(run_dir):
        old = tempfile.mkdtemp(prefix=".old-run-", dir=os.path.dirname(run_dir))
        os.rename(run_dir, os.path.join(old, "run"))
    try:
        os.rename(tmp, run_dir)
    except BaseException:
        if old is not None:
            os.rename(os.path.join(old, "run"), run_dir)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
