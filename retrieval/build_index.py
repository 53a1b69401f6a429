"""Build the FAISS memory bank and the neighbour tables of the token shards.

    python retrieval/build_index.py --config demo

Embeds every training document (from its token shards, with the encoder of
retrieval/train_encoder.py), builds the index ``retrieval.index_kind`` at
``<run>/retrieval/bank/``, and stores k neighbours per document of each split
as ``<run>/tokens/<split>/neighbours.npy`` — never the document itself, an
exact duplicate of it, or a near-duplicate.
"""

import json
import time

import fsspec
import torch

from mmgen.cli import run_cli
from mmgen.config import RunPaths, load_config
from mmgen.data.token_shards import TokenShards
from mmgen.retrieval.encoder import DualEncoder
from mmgen.retrieval.neighbours import build_bank_and_neighbours
from mmgen.tokenizers.vocab import Vocab


def main() -> None:
    cfg = load_config(description=__doc__)
    paths = RunPaths(cfg.run_dir)
    start = time.time()
    torch.set_grad_enabled(False)
    vocab = Vocab.load(paths.vocab)
    encoder = DualEncoder.load(paths.retrieval_encoder)
    bank = TokenShards(paths.tokens("train"))
    splits = {split: (TokenShards(paths.tokens(split)), paths.neighbours(split)) for split in ("train", "heldout")}
    report = build_bank_and_neighbours(encoder, vocab, bank, splits, cfg.retrieval, paths.memory_bank)
    with fsspec.open(paths.stage_timing("build_index"), "w", auto_mkdir=True) as f:
        json.dump({"seconds": time.time() - start, **report}, f)


if __name__ == "__main__":
    run_cli(main)
