"""The hybrid retriever's lexical stage: the bank-corpus documents a query names.

Similarity alone cannot find an entity's definition for a prompt that names it. A dense encoder sees a
made-up name as subword fragments, and for a name it never trained on they mean nothing; a lexical
retriever over the whole bank ranks the many training documents that use a frequent name with the
prompt's own template words ("Here is a drawing. Draw a Zorbel at the top left.") above the one document
that says what a Zorbel is. What singles the definition out is where it lives: the bank corpus
(``corpus/bank``, what retrieval/edit_bank.py writes), the memory bank's knowledge, read by no training
step. So the lookup keys on the names a query holds:

- the names are the words a bank-corpus document writes with a capital inside a sentence (proper nouns:
  "This is a Zorbel." names "zorbel"; "A", "This" open sentences and "red" or "above" are never capitalised),
  held by at most ``name_documents`` bank-corpus documents (a name defined once; one that many of them use
  is a poor key);
- a query names the documents that hold one of its words that is a name, in any case, ranked by BM25 over
  the bank corpus on those words alone (``LexicalIndex``, bm25s).

``retrieve_for_prompt`` and the neighbour tables put them first, then fill the remaining slots with the
dual encoder's nearest documents; a query that names nothing (an entity-free document) gets the dense
neighbours alone, as before. The lookup is saved in ``<bank>/names/`` beside the FAISS index.
"""

from __future__ import annotations

import json
import posixpath
from typing import Sequence

import fsspec
import numpy as np

from mmgen.files import write_atomic
from mmgen.retrieval.lexical import LexicalIndex, document_texts, proper_nouns, words

FOLDER = "names"
RECORD = "lookup.json"


class NameLookup:
    """``named(texts, k)`` → bank ids [Q, k] (-1 padded) of the bank-corpus documents each text names."""

    def __init__(self, index: LexicalIndex, *, offset: int, names: Sequence[str]):
        self.index = index
        self.offset = offset
        """Bank id of the bank corpus's first document (its rows follow the training documents')."""
        self.names = frozenset(names)
        """The words that key bank-corpus documents, lower-cased."""

    @classmethod
    def build(cls, texts: Sequence[str], offset: int, *, name_documents: int = 2) -> "NameLookup":
        """From the text of each bank-corpus document; the first is bank id ``offset``."""
        index = LexicalIndex.build(texts)
        holding = index.document_frequency
        capitalised = set().union(*map(proper_nouns, texts)) if texts else set()
        names = sorted(w for w in capitalised if w in index.terms and holding[index.terms[w]] <= name_documents)
        return cls(index, offset=offset, names=names)

    def names_in(self, text: str) -> list[str]:
        """The names ``text`` holds, in order of first use."""
        return [w for w in dict.fromkeys(words(text)) if w in self.names]

    def named(self, texts: Sequence[str], k: int) -> np.ndarray:
        """Up to ``k`` bank ids per text, best BM25 score on its names first; -1 where fewer are named."""
        _, rows = self.index.search([" ".join(self.names_in(t)) for t in texts], k)
        return np.where(rows >= 0, rows + self.offset, -1)

    def named_in_documents(self, documents, vocab, text_tokenizer, k: int) -> np.ndarray:
        """``named`` for token sequences (their text decoded)."""
        return self.named(document_texts(documents, vocab, text_tokenizer), k)

    def save(self, bank_dir: str) -> None:
        folder = posixpath.join(bank_dir, FOLDER)
        self.index.save(folder)
        # the record goes last: a folder without it holds no lookup
        write_atomic(posixpath.join(folder, RECORD), json.dumps({"offset": self.offset, "names": sorted(self.names)}))

    @classmethod
    def load(cls, bank_dir: str) -> "NameLookup | None":
        """The lookup saved beside the bank at ``bank_dir``; None when the bank has none (built 'dense')."""
        folder = posixpath.join(bank_dir, FOLDER)
        fs, root = fsspec.core.url_to_fs(folder)
        if not fs.exists(posixpath.join(root, RECORD)):
            return None
        index = LexicalIndex.load(folder)
        if index is None:
            return None
        with fs.open(posixpath.join(root, RECORD), "r") as f:
            record = json.load(f)
        return cls(index, offset=record["offset"], names=record["names"])

    @staticmethod
    def remove(bank_dir: str) -> None:
        """Drop a saved lookup (a bank rebuilt 'dense' or without a bank corpus must not keep an old one)."""
        fs, root = fsspec.core.url_to_fs(posixpath.join(bank_dir, FOLDER))
        if fs.exists(root):
            fs.rm(root, recursive=True)
