"""Train the SentencePiece text tokenizer on the text parts of the training corpus.

    python tokenizers/train_text.py --config demo [--text_tokenizer.vocab_size 1024 ...]
"""

from __future__ import annotations

import posixpath
import time
from itertools import islice

from mmgen.cli import run_cli
from mmgen.config import RunPaths, load_config
from mmgen.data.corpus import read_documents
from mmgen.data.obelics import CorpusError, ReadStats
from mmgen.files import write_json
from mmgen.tokenizers.run import SENTENCEPIECE, write_text_tokenizer_record
from mmgen.tokenizers.text import train_text_tokenizer


def main() -> None:
    cfg = load_config(description=__doc__.strip().splitlines()[0])
    paths = RunPaths(cfg.run_dir)
    corpus = cfg.data.train_corpus or paths.corpus_split("train")
    start = time.perf_counter()
    stats = ReadStats()
    passages = (text for doc in read_documents(corpus, options=cfg.data, stats=stats) for text in doc.texts if text)
    texts = list(islice(passages, cfg.text_tokenizer.max_sentences))
    if not texts:
        raise CorpusError(f"{corpus} holds no text to train the text tokenizer on")
    tokenizer = train_text_tokenizer(texts, cfg.text_tokenizer, paths.text_tokenizer)
    write_text_tokenizer_record(posixpath.dirname(paths.text_tokenizer), SENTENCEPIECE, posixpath.basename(paths.text_tokenizer))
    seconds = time.perf_counter() - start
    print(f"{corpus}: {stats.summary()}")
    write_json(paths.stage_timing("train_text"), {"seconds": round(seconds, 3), "vocab_size": tokenizer.vocab_size})


if __name__ == "__main__":
    run_cli(main)
