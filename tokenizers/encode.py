"""Pretokenize the training and held-out corpora into token shards.

    python tokenizers/encode.py --config demo
    torchrun --nproc_per_node 8 tokenizers/encode.py --config my.configs:obelics   # split across ranks

Reads ``data.train_corpus`` / ``data.heldout_corpus`` (OBELICS, MMC4, caption pairs or an ImageFolder,
any fsspec URL; several comma-separated corpora are mixed by ``data.train_weights``; empty: the run's
shapes world), turns every document into one token sequence with the trained text and image tokenizers
(their joint ``Vocab`` goes to ``<run>/tokenizers/vocab.json``), and writes memory-mappable token shards
to ``<run>/tokens/<split>``; the run's bank corpus (``corpus/bank``: a world's entity definitions,
memory edits) goes to ``<run>/tokens/bank``. Input shards are split across ranks; a rerun skips finished ones, so a
killed encode just resumes. Ends with documents in, out, and skipped by reason per split.
"""

import json
import posixpath
from datetime import timedelta

import torch

from mmgen.cli import run_cli, start_stage
from mmgen.config import ConfigError, RunPaths
from mmgen.config.schema import reading_policy
from mmgen.data.corpus import open_corpus
from mmgen.data.curation import content_hash
from mmgen.device import join_ranks, leave_ranks
from mmgen.fingerprints import tokenizer_fingerprints
from mmgen.retrieval.edits import bank_target, remove_bank_tokens
from mmgen.tokenizers.image import ImageTokenizer
from mmgen.tokenizers.pretokenize import Progress, Target, encode_job, finalize, plan_jobs, require_documents
from mmgen.tokenizers.text import TextTokenizer
from mmgen.tokenizers.vocab import MultimodalTokenizer, Vocab

def corpus_urls(value: str, default: str) -> list[str]:
    return [u.strip() for u in (value or default).split(",") if u.strip()]


def plan_targets(cfg, paths: RunPaths, image_size: int) -> list[Target]:
    targets = []
    for split, value in (("train", cfg.data.train_corpus), ("heldout", cfg.data.heldout_corpus)):
        urls = corpus_urls(value, paths.corpus_split(split))
        weights = cfg.data.train_weights if split == "train" and cfg.data.train_weights else [None] * len(urls)
        share = cfg.world.pretrain_caption_share
        if split == "train" and not value and share > 0:  # the shapes world: its documents and caption pairs
            if cfg.data.train_weights:
                raise ConfigError("data.train_weights needs data.train_corpus; the world's mixture is "
                                  "world.pretrain_caption_share")
            urls, weights = [*urls, paths.caption_pairs("train")], [1 - share, share]
        if len(weights) != len(urls):
            raise ConfigError(f"data.train_weights has {len(weights)} weights for {len(urls)} training corpora")
        for k, (url, weight) in enumerate(zip(urls, weights)):
            corpus = open_corpus(url, cfg.data.corpus_kind, options=cfg.data, image_size=image_size)
            folder = paths.tokens(split) if len(urls) == 1 else posixpath.join(paths.tokens(split), f"c{k}")
            targets.append(Target(split=split, corpus=corpus, folder=folder, weight=weight))
    bank = bank_target(cfg, paths, image_size)
    if bank is None:
        remove_bank_tokens(paths)  # an earlier world's bank must not stay in the memory bank
    return targets + ([bank] if bank else [])


def main() -> None:
    stage = start_stage("encode", __doc__)
    cfg, paths = stage.cfg, stage.paths
    # the process group only serves the final barrier: everyone's shards are done before the manifests list them
    rank, world, device = join_ranks("gloo", timeout=timedelta(hours=48))
    text = TextTokenizer.load(paths.text_tokenizer)
    image = ImageTokenizer.load(paths.image_tokenizer, device=device)
    # the joint id space is fixed here, the first stage that needs both tokenizers
    vocab = Vocab.build(text_vocab_size=text.vocab_size, codebook_size=image.codebook_size, grid=image.grid)
    if rank == 0:
        vocab.save(paths.vocab)
    tokenizer = MultimodalTokenizer(vocab, text, image)
    targets = plan_targets(cfg, paths, image.image_size)
    jobs = plan_jobs(targets)
    inputs = tokenizer_fingerprints(paths, vocab)
    # a done record only counts for the same tokenizers and reading policy (the whole policy: no field is left out)
    fingerprint = content_hash(json.dumps({"inputs": inputs, "reading": reading_policy(cfg.data)}, sort_keys=True).encode())
    mine = jobs[rank::world]
    prefix = f"[rank {rank}/{world}] " if world > 1 else ""
    print(f"{prefix}encoding {len(mine)} of {len(jobs)} input shards "
          f"({', '.join(f'{t.split}: {t.corpus.kind} {t.corpus.url}' for t in targets)})")  # fmt: skip
    progress = Progress(len(mine), prefix=prefix)
    resumed = 0
    for job in mine:
        record = encode_job(job, tokenizer, tokens_per_shard=cfg.data.tokens_per_shard,
                            image_batch_size=cfg.data.encode_batch_size, progress=progress,
                            fingerprint=fingerprint)  # fmt: skip
        resumed += record.get("resumed", False)
    progress.close()
    if resumed:
        print(f"{prefix}{resumed} input shards were already done and skipped")
    if world > 1:
        torch.distributed.barrier()
    summary = None
    if rank == 0:
        summary = finalize(targets, vocab_size=vocab.size, dedup=cfg.data.dedup_documents, inputs=inputs)
        for split, s in summary.items():
            print(f"{split}: {json.dumps(s)}")
        stage.record_timing(**summary)
    leave_ranks(world)
    if summary is not None:  # after the barrier: the other ranks are not left waiting for rank 0
        require_documents(summary)


if __name__ == "__main__":
    with torch.no_grad():
        run_cli(main)
