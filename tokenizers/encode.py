"""Pretokenize the training and held-out corpora into token shards.

    python tokenizers/encode.py --config demo
    torchrun --nproc_per_node 8 tokenizers/encode.py --config my.configs:obelics   # split across ranks

Reads ``data.train_corpus`` / ``data.heldout_corpus`` (OBELICS, MMC4, caption pairs or an ImageFolder,
any fsspec URL; several comma-separated corpora are mixed by ``data.train_weights``; empty: the run's
shapes world), turns every document into one token sequence with the trained text and image tokenizers
(their joint ``Vocab`` goes to ``<run>/tokenizers/vocab.json``), and writes memory-mappable token shards
to ``<run>/tokens/<split>``. Input shards are split across ranks; a rerun skips finished ones, so a
killed encode just resumes. Ends with documents in, out, and skipped by reason per split.
"""

import json
import os
import posixpath
import time
from datetime import timedelta

import fsspec
import torch

from mmgen.cli import run_cli
from mmgen.config import ConfigError, RunPaths, load_config
from mmgen.data.corpus import open_corpus
from mmgen.data.curation import content_hash
from mmgen.files import write_json
from mmgen.tokenizers.image import CONFIG_FILE, WEIGHTS_FILE, ImageTokenizer
from mmgen.tokenizers.pretokenize import Progress, Target, encode_job, finalize, plan_jobs, require_documents
from mmgen.tokenizers.text import TextTokenizer
from mmgen.tokenizers.vocab import MultimodalTokenizer, Vocab

# the DataConfig fields that change what encode writes; the rest (order, mixing, CM3...) act in the loader
ENCODE_FIELDS = ("train_corpus", "heldout_corpus", "tokens_per_shard", "encode_batch_size", "corpus_kind",
                 "allow_network", "network_timeout", "network_retries", "image_root", "missing_image",
                 "max_image_pixels", "image_resize", "caption_template", "caption_order", "min_text_chars",
                 "max_text_chars", "min_image_side", "max_aspect_ratio", "max_images_per_document",
                 "dedup_documents", "dedup_images")  # fmt: skip


def corpus_urls(value: str, default: str) -> list[str]:
    return [u.strip() for u in (value or default).split(",") if u.strip()]


def plan_targets(cfg, paths: RunPaths, image_size: int) -> list[Target]:
    targets = []
    for split, value in (("train", cfg.data.train_corpus), ("heldout", cfg.data.heldout_corpus)):
        urls = corpus_urls(value, paths.corpus_split(split))
        weights = cfg.data.train_weights if split == "train" and cfg.data.train_weights else [None] * len(urls)
        if len(weights) != len(urls):
            raise ConfigError(f"data.train_weights has {len(weights)} weights for {len(urls)} training corpora")
        for k, (url, weight) in enumerate(zip(urls, weights)):
            corpus = open_corpus(url, cfg.data.corpus_kind, options=cfg.data, image_size=image_size)
            folder = paths.tokens(split) if len(urls) == 1 else posixpath.join(paths.tokens(split), f"c{k}")
            targets.append(Target(split=split, corpus=corpus, folder=folder, weight=weight))
    return targets


def main() -> None:
    cfg = load_config(description=__doc__)
    paths = RunPaths(cfg.run_dir)
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:  # only for the final barrier: everyone's shards are done before the manifests list them
        torch.distributed.init_process_group("gloo", timeout=timedelta(hours=48))
    start = time.time()
    torch.set_grad_enabled(False)
    if "OMP_NUM_THREADS" not in os.environ:  # ranks share the machine's cores
        torch.set_num_threads(max(len(os.sched_getaffinity(0)) // world, 1))
    device = torch.device("cpu")
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    text = TextTokenizer.load(paths.text_tokenizer)
    image = ImageTokenizer.load(paths.image_tokenizer, device=device)
    # the joint id space is fixed here, the first stage that needs both tokenizers
    vocab = Vocab.build(text_vocab_size=text.vocab_size, codebook_size=image.codebook_size, grid=image.grid)
    if rank == 0:
        vocab.save(paths.vocab)
    tokenizer = MultimodalTokenizer(vocab, text, image)
    targets = plan_targets(cfg, paths, image.image_size)
    jobs = plan_jobs(targets)
    # a done record only counts for the same tokenizers and reading policy
    fingerprint = content_hash(json.dumps(vocab.to_dict(), sort_keys=True).encode(), text.model_proto,
                               json.dumps({k: getattr(cfg.data, k) for k in ENCODE_FIELDS}, sort_keys=True).encode(),
                               _weights_bytes(paths.image_tokenizer))  # fmt: skip
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
        summary = finalize(targets, vocab_size=vocab.size, dedup=cfg.data.dedup_documents)
        for split, s in summary.items():
            print(f"{split}: {json.dumps(s)}")
        write_json(paths.stage_timing("encode"), {"seconds": time.time() - start, **summary})
    if world > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    if summary is not None:  # after the barrier: the other ranks are not left waiting for rank 0
        require_documents(summary)


def _weights_bytes(image_dir: str) -> bytes:
    fs, root = fsspec.core.url_to_fs(image_dir)
    return b"".join(fs.cat_file(posixpath.join(root, name)) for name in (WEIGHTS_FILE, CONFIG_FILE))


if __name__ == "__main__":
    run_cli(main)
