"""Convert between mmgen runs and Hugging Face ChameleonForConditionalGeneration directories.

    # a Chameleon/Anole checkpoint -> a complete mmgen run folder (decoder, vocabulary, BPE text tokenizer, VQ-VAE)
    python train/convert_chameleon.py import --hf_dir /path/chameleon --output_dir /path/run
        [--vq_decoder /path/vqgan.ckpt]   # Meta's VQGAN weights (taming layout): sampled images can be rendered
        [--replace]                       # overwrite a folder that already holds files
    # a run (pretrained, imported or fine-tuned) -> a directory transformers loads
    python train/convert_chameleon.py export --output_dir /path/run --hf_dir /path/out [--from_folder sft]
        [--step N] [--dtype bfloat16]
        [--extras_from /path/chameleon]   # VQ-VAE, tokenizer files and token names (default: an imported run's own)

After an import, eval/sample.py, eval/classify.py, tokenizers/encode_sft.py and
train/sft.py (full or LoRA) run on the folder as on a trained mmgen run.
"""

from __future__ import annotations

import argparse
import os
import posixpath
import sys

import torch

from mmgen.cli import run_cli, start_stage
from mmgen.config import ConfigError, RunPaths
from mmgen.interop import save_chameleon
from mmgen.interop.chameleon_run import extras_dir, import_chameleon_run
from mmgen.model.checkpoint import load_trained_model
from mmgen.tokenizers.vocab import Vocab


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("direction", choices=["export", "import"])
    parser.add_argument("--hf_dir", required=True, help="the Hugging Face checkpoint directory")
    parser.add_argument("--step", type=int, default=-1, help="export: checkpoint step (-1: newest)")
    parser.add_argument("--from_folder", default="pretrain",
                        help="export: the run's training folder to export (pretrain, or an SFT folder such as sft)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                        help="export: weight dtype (default: as trained); import: float32 unless given")
    parser.add_argument("--extras_from", default=None,
                        help="export: Chameleon directory whose VQ-VAE, tokenizer files and token names are copied in")
    parser.add_argument("--vq_decoder", default=None,
                        help="import: VQGAN decoder weights in taming's layout (Meta's tokenizer/vqgan.ckpt)")
    parser.add_argument("--replace", action="store_true", help="import: overwrite a target folder that holds files")
    args, rest = parser.parse_known_args()
    stage = start_stage("convert_chameleon", __doc__, rest)  # --config, --output_dir and other experiment overrides
    cfg, paths = stage.cfg, stage.paths
    dtype = getattr(torch, args.dtype) if args.dtype else None
    try:
        if args.direction == "export":
            export(paths, args, cfg.checkpoint.folder, dtype)
        else:
            summary = import_chameleon_run(args.hf_dir, paths.root, decoder_weights=args.vq_decoder, replace=args.replace,
                                           dtype=dtype or torch.float32, checkpoint_folder=cfg.checkpoint.folder)
            print(f"imported {args.hf_dir} into {paths.root} ({summary['parameters'] / 1e6:.1f}M parameters, "
                  f"vocab {summary['vocab_size']}, {summary['text_pieces']} text pieces, image grid {summary['grid']})")
    except ValueError as err:  # a checkpoint or target that cannot be converted: the user's input, one line
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"{args.direction} {args.hf_dir}: {err}") from None


def export(paths: RunPaths, args, checkpoint_folder: str, dtype) -> None:
    source = posixpath.join(paths.root, args.from_folder)
    model, step = load_trained_model(source, checkpoint_folder=checkpoint_folder, step=args.step)
    extras = args.extras_from
    if extras is None and os.path.isdir(extras_dir(paths.root)):
        extras = extras_dir(paths.root)  # an imported run carries its source's VQ-VAE and tokenizer files
    save_chameleon(model, Vocab.load(paths.vocab), args.hf_dir, dtype=dtype, extras_from=extras)
    print(f"exported step {step} of {source} to {args.hf_dir}" + (f" (with the VQ-VAE and tokenizer of {extras})" if extras else ""))


if __name__ == "__main__":
    sys.exit(run_cli(main))
