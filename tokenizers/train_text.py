"""Train the SentencePiece text tokenizer on the text parts of the training corpus (and of the run's bank
corpus, ``corpus/bank``, when it has one: the memory bank's text is read in context too).

    python tokenizers/train_text.py --config demo [--text_tokenizer.vocab_size 1024 ...]
"""

from __future__ import annotations

import posixpath
from itertools import islice

from mmgen.cli import run_cli, start_stage
from mmgen.data.corpus import read_documents
from mmgen.data.obelics import CorpusError, ReadStats
from mmgen.retrieval.edits import has_bank_corpus_files
from mmgen.tokenizers.run import SENTENCEPIECE, write_text_tokenizer_record
from mmgen.tokenizers.text import train_text_tokenizer


def main() -> None:
    stage = start_stage("train_text", __doc__.strip().splitlines()[0])
    cfg, paths = stage.cfg, stage.paths
    corpus = cfg.data.train_corpus or paths.corpus_split("train")
    # the bank first: it is small, and max_sentences must never cut its definitions off
    corpora = ([paths.corpus_split("bank")] if has_bank_corpus_files(paths) else []) + [corpus]
    stats = ReadStats()
    passages = (text for url in corpora for doc in read_documents(url, options=cfg.data, stats=stats)
                for text in doc.texts if text)  # fmt: skip
    texts = list(islice(passages, cfg.text_tokenizer.max_sentences))
    if not texts:
        raise CorpusError(f"{corpus} holds no text to train the text tokenizer on")
    tokenizer = train_text_tokenizer(texts, cfg.text_tokenizer, paths.text_tokenizer)
    write_text_tokenizer_record(posixpath.dirname(paths.text_tokenizer), SENTENCEPIECE, posixpath.basename(paths.text_tokenizer))
    print(f"{corpus}: {stats.summary()}")
    stage.record_timing(vocab_size=tokenizer.vocab_size)


if __name__ == "__main__":
    run_cli(main)
