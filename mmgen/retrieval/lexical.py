"""The memory bank's lexical stage: BM25 over whole words.

A dense encoder sees a made-up name ("Zorbel") as a few subword fragments it shares with other names, and
has never seen most names at all; a lexical index over whole words sees one rare term, whose inverse
document frequency makes it outweigh every template word a query shares with the bank. Words are runs of
letters and digits, lower-cased, read from a document's text (its pieces decoded; images carry no words).

Scores are Okapi BM25 (``k1`` saturates a term's frequency, ``b`` normalises by document length). The
index is a sparse matrix [documents, terms] of each posting's BM25 weight, so a block of queries is scored
against the whole bank in one sparse product; ``save`` and ``load`` keep it beside the FAISS index.
"""

from __future__ import annotations

import io
import json
import posixpath
import re
import warnings
from typing import Sequence

import fsspec
import numpy as np
import torch

from mmgen.files import write_atomic

_WORD = re.compile(r"[^\W_]+")
FILES = ("lexical_terms.json", "lexical_postings.npz")


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

    def __init__(self, terms: dict[str, int], indptr: np.ndarray, columns: np.ndarray, weights: np.ndarray,
                 idf: np.ndarray, *, k1: float, b: float):  # fmt: skip
        self.terms = terms
        self.idf = np.asarray(idf, dtype=np.float32)
        self.k1, self.b = k1, b
        self.indptr = np.asarray(indptr, dtype=np.int64)
        self.columns = np.asarray(columns, dtype=np.int64)
        self.weights = np.asarray(weights, dtype=np.float32)
        self.ntotal = len(self.indptr) - 1
        # rows are documents: (documents × terms) @ (terms × queries) scores a block of queries at once
        with warnings.catch_warnings():  # torch calls its CSR tensors beta; this product is all they do here
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            self._matrix = torch.sparse_csr_tensor(torch.from_numpy(self.indptr), torch.from_numpy(self.columns),
                                                   torch.from_numpy(self.weights), size=(self.ntotal, max(len(terms), 1)),
                                                   check_invariants=True)  # fmt: skip

    @classmethod
    def build(cls, texts: Sequence[str], *, k1: float = 1.2, b: float = 0.75) -> "LexicalIndex":
        terms: dict[str, int] = {}
        rows = []
        for text in texts:
            counts: dict[int, int] = {}
            for word in words(text):
                term = terms.setdefault(word, len(terms))
                counts[term] = counts.get(term, 0) + 1
            rows.append(counts)
        n = len(rows)
        lengths = np.array([sum(r.values()) for r in rows], dtype=np.float64)
        mean_length = max(float(lengths.mean()) if n else 0.0, 1.0)
        df = np.zeros(len(terms), dtype=np.float64)
        for r in rows:
            df[list(r)] += 1
        # BM25's idf, kept positive (Lucene's form): a word in most documents still counts a little
        idf = np.log(1.0 + (n - df + 0.5) / (df + 0.5))
        indptr, columns, weights = [0], [], []
        for r, length in zip(rows, lengths):
            term_ids = np.fromiter(r, dtype=np.int64, count=len(r))
            tf = np.fromiter(r.values(), dtype=np.float64, count=len(r))
            order = np.argsort(term_ids)
            term_ids, tf = term_ids[order], tf[order]
            norm = k1 * (1.0 - b + b * length / mean_length)
            columns.append(term_ids)
            weights.append(idf[term_ids] * tf * (k1 + 1.0) / (tf + norm))
            indptr.append(indptr[-1] + len(r))
        cat = lambda parts, dtype: np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)  # noqa: E731
        return cls(terms, np.array(indptr), cat(columns, np.int64), cat(weights, np.float32), idf, k1=k1, b=b)

    def query_matrix(self, texts: Sequence[str]) -> torch.Tensor:
        """[terms, Q]: 1 for each known word of each query (a word the bank never holds cannot match)."""
        out = torch.zeros(max(len(self.terms), 1), len(texts))
        for q, text in enumerate(texts):
            known = [self.terms[w] for w in set(words(text)) if w in self.terms]
            out[known, q] = 1.0
        return out

    def scores(self, texts: Sequence[str]) -> np.ndarray:
        """BM25 score of every bank document for each query [Q, documents]."""
        if self.ntotal == 0:
            return np.zeros((len(texts), 0), dtype=np.float32)
        return (self._matrix @ self.query_matrix(texts)).T.contiguous().numpy()

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
        fs, root = fsspec.core.url_to_fs(folder)
        buf = io.BytesIO()
        np.savez(buf, indptr=self.indptr, columns=self.columns, weights=self.weights, idf=self.idf)
        record = {"k1": self.k1, "b": self.b, "terms": self.terms}
        write_atomic(posixpath.join(root, FILES[1]), buf.getvalue(), fs)
        write_atomic(posixpath.join(root, FILES[0]), json.dumps(record), fs)

    @classmethod
    def load(cls, folder: str) -> "LexicalIndex | None":
        """The index saved in ``folder``, or None when it holds none (a bank built dense-only)."""
        fs, root = fsspec.core.url_to_fs(folder)
        if not all(fs.exists(posixpath.join(root, name)) for name in FILES):
            return None
        with fs.open(posixpath.join(root, FILES[0]), "r") as f:
            record = json.load(f)
        with fs.open(posixpath.join(root, FILES[1]), "rb") as f:
            arrays = np.load(io.BytesIO(f.read()), allow_pickle=False)
            parts = {name: arrays[name] for name in ("indptr", "columns", "weights", "idf")}
        return cls(record["terms"], k1=record["k1"], b=record["b"], **parts)
