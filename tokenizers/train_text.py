"""Train the SentencePiece text tokenizer on the text parts of the training corpus.

    python tokenizers/train_text.py --config demo [--text_tokenizer.vocab_size 1024 ...]
"""

from __future__ import annotations

import posixpath
from itertools import islice

from mmgen.cli import run_cli, start_stage
from mmgen.data.corpus import read_documents
from mmgen.data.obelics import CorpusError, ReadStats
from mmgen.tokenizers.run import SENTENCEPIECE, write_text_tokenizer_record
from mmgen.tokenizers.text import train_text_tokenizer


def main() -> None:
    stage = start_stage("train_text", __doc__.strip().splitlines()[0])
    cfg, paths = stage.cfg, stage.paths
    corpus = cfg.data.train_corpus or paths.corpus_split("train")
    stats = ReadStats()
    passages = (text for doc in read_documents(corpus, options=cfg.data, stats=stats) for text in doc.texts if text)
    texts = list(islice(passages, cfg.text_tokenizer.max_sentences))
    if not texts:
        raise CorpusError(f"{corpus} holds no text to train the text tokenizer on")
    tokenizer = train_text_tokenizer(texts, cfg.text_tokenizer, paths.text_tokenizer)
    write_text_tokenizer_record(posixpath.dirname(paths.text_tokenizer), SENTENCEPIECE, posixpath.basename(paths.text_tokenizer))
    print(f"{corpus}: {stats.summary()}")
    stage.record_timing(vocab_size=tokenizer.vocab_size)


if __name__ == "__main__":
    run_cli(main)
