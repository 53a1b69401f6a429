"""Convert between mmgen runs and Hugging Face ChameleonForConditionalGeneration directories.

    # a trained mmgen decoder (+ its vocab) -> a directory transformers loads
    python train/convert_chameleon.py export --config demo --hf_dir /path/out [--step N] [--dtype bfloat16]
        [--extras_from /path/chameleon]   # copy a real checkpoint's VQ-VAE, tokenizer files, token names
    # a Chameleon checkpoint -> an mmgen run folder (tokenizers/vocab.json, pretrain/model.json, a step-0 checkpoint)
    python train/convert_chameleon.py import --hf_dir /path/chameleon --output_dir /path/run

Imported runs hold the decoder and Chameleon's vocabulary layout; Chameleon's
BPE text tokenizer and VQ-VAE are not mmgen's, so score or sample them with
token ids (mmgen.model.checkpoint.load_trained_model reads the decoder back).
"""

from __future__ import annotations

import argparse
import posixpath
import sys
import warnings

import torch
import torch.distributed.checkpoint as dcp

from mmgen.cli import run_cli
from mmgen.config import RunPaths, load_config
from mmgen.interop import load_chameleon, save_chameleon
from mmgen.model.checkpoint import load_trained_model, save_model_description
from mmgen.tokenizers.vocab import Vocab


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("direction", choices=["export", "import"])
    parser.add_argument("--hf_dir", required=True, help="the Hugging Face checkpoint directory")
    parser.add_argument("--step", type=int, default=-1, help="export: pretraining checkpoint step (-1: newest)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                        help="export: weight dtype (default: as trained); import: float32 unless given")
    parser.add_argument("--extras_from", default=None,
                        help="export: Chameleon directory whose VQ-VAE, tokenizer files and token names are copied in")
    args, rest = parser.parse_known_args()
    cfg = load_config(rest, description=__doc__)  # --config, --output_dir and other experiment overrides
    paths = RunPaths(cfg.run_dir)
    dtype = getattr(torch, args.dtype) if args.dtype else None
    if args.direction == "export":
        model, step = load_trained_model(paths.pretrain_dir, checkpoint_folder=cfg.checkpoint.folder, step=args.step)
        save_chameleon(model, Vocab.load(paths.vocab), args.hf_dir, dtype=dtype, extras_from=args.extras_from)
        print(f"exported step {step} of {paths.pretrain_dir} to {args.hf_dir}")
        return
    model, vocab = load_chameleon(args.hf_dir, dtype=dtype or torch.float32)
    checkpoint = posixpath.join(paths.pretrain_dir, cfg.checkpoint.folder, "step-0")
    with warnings.catch_warnings():  # DCP warns that it saves from one process, which is the intent
        warnings.simplefilter("ignore", UserWarning)
        dcp.save(model.state_dict(), checkpoint_id=checkpoint, no_dist=True)
    save_model_description(paths.pretrain_dir, model.cfg, vocab.size)
    vocab.save(paths.vocab)
    print(f"imported {args.hf_dir} into {paths.root} ({model.num_params() / 1e6:.1f}M parameters, vocab {vocab.size})")


if __name__ == "__main__":
    sys.exit(run_cli(main))
