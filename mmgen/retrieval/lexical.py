"""The memory bank's lexical stage: BM25 over whole words, scored by bm25s.

A dense encoder sees a made-up name ("Zorbel") as a few subword fragments it shares with other names, and
has never seen most names at all; a lexical index over whole words sees one rare term, whose inverse
document frequency makes it outweigh every template word a query shares with the bank. Words are runs of
letters and digits, lower-cased, read from a document's text (its pieces decoded; images carry no words).

The words are this module's (``words``: the name lookup reads names with the same rule); the index and its
scores are bm25s's Okapi BM25 in Lucene's form (idf ``log(1 + (N - df + 0.5) / (df + 0.5))``, positive even
for a word in most documents; ``k1`` saturates a term's frequency, ``b`` normalises by document length),
a sparse words × documents matrix of each posting's weight. What stays here is what bm25s does not do the
project's way: a query counts each of its words once, a document that shares no word with a query is no
result, ties go to the lower row id (a search is reproducible), and ``save``/``load`` go through fsspec with
atomic writes beside the FAISS index (bm25s's own files: .npy arrays and JSON, nothing pickled).
"""

from __future__ import annotations

import logging
import os
import posixpath
import re
import tempfile
import warnings
from typing import Sequence

import bm25s
import fsspec
import numpy as np

from mmgen.config.paths import StaleInputError
from mmgen.files import reading, write_atomic

# bm25s sets its own logger to DEBUG; its notes ("Building index from IDs") are not for a stage's console
logging.getLogger("bm25s").setLevel(logging.WARNING)

_WORD = re.compile(r"[^\W_]+")
PARAMETERS = "params.index.json"
"""bm25s's record of the index (k1, b, method, number of documents); written last, it marks a complete index."""
FILES = ("data.csc.index.npy", "indices.csc.index.npy", "indptr.csc.index.npy", "vocab.index.json", PARAMETERS)
"""What ``BM25.save`` writes for a Lucene index without a corpus."""
OLD_FILES = ("lexical_terms.json", "lexical_postings.npz")
"""An index saved by mmgen's own BM25, before bm25s: not read, the bank is rebuilt."""


def words(text: str) -> list[str]:
    """The whole words of ``text``, lower-cased: runs of letters and digits."""
    return _WORD.findall(text.lower())


def proper_nouns(text: str) -> set[str]:
    """The words ``text`` writes with a capital inside a sentence (not first, not after . ! or ?), lower-cased:
    the names it uses ("This is a Zorbel." gives {"zorbel"})."""
    found = set()
    for match in _WORD.finditer(text):
        before = text[: match.start()].rstrip()
        if match.group(0)[0].isupper() and before and before[-1] not in ".!?":
            found.add(match.group(0).lower())
    return found


def document_texts(documents, vocab, text_tokenizer) -> list[str]:
    """The text of each token sequence of ``documents`` (a list or token shards; pieces decoded, images left out)."""
    from mmgen.retrieval.documents import split_document  # documents.py imports torch models; keep this light

    return [text_tokenizer.decode(split_document(documents[i], vocab)[0].tolist()) for i in range(len(documents))]


class LexicalIndex:
    """BM25 over the bank's documents: ``search(texts, k)`` → (scores [Q, k], row ids [Q, k], -1 where none)."""

    def __init__(self, bm25: bm25s.BM25):
        self.bm25 = bm25
        self.terms: dict[str, int] = bm25.vocab_dict
        """Each word of the bank and its column in the index."""
        self.ntotal = int(bm25.scores["num_docs"])

    @property
    def document_frequency(self) -> np.ndarray:
        """[terms]: how many documents hold each word (the postings of its column)."""
        return np.diff(self.bm25.scores["indptr"])

    @classmethod
    def build(cls, texts: Sequence[str], *, k1: float = 1.2, b: float = 0.75) -> "LexicalIndex":
        terms: dict[str, int] = {}
        # word ids in order of first use, not bm25s's (a set's order, which changes with the hash seed)
        ids = [[terms.setdefault(word, len(terms)) for word in words(text)] for text in texts]
        bm25 = bm25s.BM25(k1=k1, b=b, method="lucene")
        with warnings.catch_warnings():
            # a bank without a word (none, or only images) has no postings: the mean length bm25s takes of it
            # (NaN, with a warning) weighs nothing
            warnings.simplefilter("ignore", RuntimeWarning)
            bm25.index((ids, terms), create_empty_token=False, show_progress=False)
        return cls(bm25)

    def scores(self, texts: Sequence[str]) -> np.ndarray:
        """BM25 score of every bank document for each query [Q, documents]; each word of a query counts once and
        a word the bank never holds cannot match."""
        out = np.zeros((len(texts), self.ntotal), dtype=np.float32)
        for q, text in enumerate(texts):
            known = [self.terms[w] for w in dict.fromkeys(words(text)) if w in self.terms]
            if known and self.ntotal:
                out[q] = self.bm25.get_scores_from_ids(known)
        return out

    def search(self, texts: Sequence[str], k: int, *, block: int = 256) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best documents of each query, best first: (scores, row ids); a document that shares no
        word with the query is no result (id -1, score 0)."""
        k_found = min(k, self.ntotal)
        out_scores = np.zeros((len(texts), k), dtype=np.float32)
        out_ids = np.full((len(texts), k), -1, dtype=np.int64)
        for start in range(0, len(texts), block):
            s = self.scores(texts[start : start + block])
            if k_found == 0:
                continue
            top = np.argpartition(-s, k_found - 1, axis=1)[:, :k_found]
            top_scores = np.take_along_axis(s, top, axis=1)
            # best first, ties by the lower id so a search is reproducible
            order = np.lexsort((top, -top_scores), axis=1)
            top, top_scores = np.take_along_axis(top, order, 1), np.take_along_axis(top_scores, order, 1)
            rows = slice(start, start + len(s))
            out_ids[rows, :k_found] = np.where(top_scores > 0, top, -1)
            out_scores[rows, :k_found] = np.where(top_scores > 0, top_scores, 0.0)
        return out_scores, out_ids

    def save(self, folder: str) -> None:
        """bm25s's files in ``folder`` (any fsspec URL), each written atomically, its parameters last."""
        fs, root = fsspec.core.url_to_fs(folder)
        with tempfile.TemporaryDirectory() as tmp:
            self.bm25.save(tmp, show_progress=False)
            for name in FILES:
                with open(os.path.join(tmp, name), "rb") as f:
                    write_atomic(posixpath.join(root, name), f.read(), fs)

    @classmethod
    def load(cls, folder: str) -> "LexicalIndex | None":
        """The index saved in ``folder``, or None when it holds none (a bank built dense-only); a
        ``StaleInputError`` for one saved by mmgen's own BM25 before bm25s, a ``CorruptFileError`` for a torn one."""
        fs, root = fsspec.core.url_to_fs(folder)
        if not fs.exists(posixpath.join(root, PARAMETERS)):
            if any(fs.exists(posixpath.join(root, name)) for name in OLD_FILES):
                raise StaleInputError(f"{folder} holds a lexical index saved by an older mmgen (its own BM25, before "
                                      f"bm25s): rerun retrieval/build_index.py to rebuild the memory bank")  # fmt: skip
            return None
        # bm25s reads a local folder: bring the files over from wherever the bank lives
        with tempfile.TemporaryDirectory() as tmp:
            for name in FILES:
                with fs.open(posixpath.join(root, name), "rb") as f, open(os.path.join(tmp, name), "wb") as out:
                    out.write(f.read())
            with reading(folder, "bm25s index"):
                bm25 = bm25s.BM25.load(tmp, mmap=False, allow_pickle=False, show_progress=False)
                bm25.scores["num_docs"] = int(bm25.scores["num_docs"])
                return cls(bm25)
