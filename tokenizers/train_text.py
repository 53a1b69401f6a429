"""Train the SentencePiece text tokenizer on the text parts of the training corpus.

    python tokenizers/train_text.py --config demo [--text_tokenizer.vocab_size 1024 ...]
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import fsspec  # noqa: E402

from mmgen.cli import run_cli  # noqa: E402
from mmgen.config import RunPaths, load_config  # noqa: E402
from mmgen.data.obelics import ReadStats, read_obelics  # noqa: E402
from mmgen.tokenizers.text import train_text_tokenizer  # noqa: E402


def main() -> None:
    cfg = load_config(description=__doc__.strip().splitlines()[0])
    paths = RunPaths(cfg.run_dir)
    corpus = cfg.data.train_corpus or paths.corpus_split("train")
    start = time.perf_counter()
    stats = ReadStats()
    texts = (text for doc in read_obelics(corpus, stats=stats) for text in doc.texts)
    tokenizer = train_text_tokenizer(texts, cfg.text_tokenizer, paths.text_tokenizer)
    seconds = time.perf_counter() - start
    print(f"{corpus}: {stats.summary()}")
    with fsspec.open(paths.stage_timing("train_text"), "w", auto_mkdir=True) as f:
        json.dump({"seconds": round(seconds, 3), "vocab_size": tokenizer.vocab_size}, f)


if __name__ == "__main__":
    run_cli(main)
