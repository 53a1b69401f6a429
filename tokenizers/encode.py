"""Pretokenize the training and held-out corpora into token shards.

    python tokenizers/encode.py --config demo

Reads OBELICS shards (``data.train_corpus`` / ``data.heldout_corpus``, or the
run's shapes world), turns every document into one token sequence with the
trained text and image tokenizers (their joint ``Vocab`` goes to
``<run>/tokenizers/vocab.json``), and writes memory-mappable token shards to
``<run>/tokens/<split>``. Ends with documents in, out, and skipped by reason.
"""

import json
import time

import fsspec
import torch

from mmgen.cli import run_cli
from mmgen.config import RunPaths, load_config
from mmgen.data.obelics import ReadStats, read_obelics
from mmgen.data.token_shards import TokenShardWriter
from mmgen.device import default_device
from mmgen.tokenizers.image import ImageTokenizer
from mmgen.tokenizers.pretokenize import pretokenize
from mmgen.tokenizers.text import TextTokenizer
from mmgen.tokenizers.vocab import MultimodalTokenizer, Vocab


def main() -> None:
    cfg = load_config(description=__doc__)
    paths = RunPaths(cfg.run_dir)
    start = time.time()
    torch.set_grad_enabled(False)
    text = TextTokenizer.load(paths.text_tokenizer)
    image = ImageTokenizer.load(paths.image_tokenizer, device=default_device())
    # the joint id space is fixed here, the first stage that needs both tokenizers
    vocab = Vocab.build(text_vocab_size=text.vocab_size, codebook_size=image.codebook_size, grid=image.grid)
    vocab.save(paths.vocab)
    tokenizer = MultimodalTokenizer(vocab, text, image)
    summary = {}
    for split, url in (("train", cfg.data.train_corpus), ("heldout", cfg.data.heldout_corpus)):
        url = url or paths.corpus_split(split)
        stats = ReadStats()
        writer = TokenShardWriter(paths.tokens(split), vocab_size=tokenizer.vocab.size, tokens_per_shard=cfg.data.tokens_per_shard)
        print(f"{split}: encoding {url}")
        counts = pretokenize(read_obelics(url, stats=stats), tokenizer, writer, image_batch_size=cfg.data.encode_batch_size)
        skipped = dict(stats.skipped)
        writer.close({"source": url, "skipped": skipped})
        summary[split] = {"documents_in": stats.documents_read + sum(skipped.values()), "documents_out": counts.get("documents", 0),
                          "tokens": counts.get("tokens", 0), "images": counts.get("images", 0), "skipped": skipped}
        print(f"{split}: {json.dumps(summary[split])}")
        for source, row, reason in stats.examples[:5]:
            print(f"  skipped {source} row {row}: {reason}")
    with fsspec.open(paths.stage_timing("encode"), "w", auto_mkdir=True) as f:
        json.dump({"seconds": time.time() - start, **summary}, f)


if __name__ == "__main__":
    run_cli(main)
