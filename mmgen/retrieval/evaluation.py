"""How retrieval serves the model: held-out bits per token with or without retrieved context, and recall of
the defining document of an entity.

The retrieval-augmented model is scored on each held-out document after its
retrieved prefix (``BOS r₁ SEP r₂ SEP``); the baseline after BOS alone. Only the
main document's tokens are scored, so both numbers measure the same targets.

``defining_document_recall`` asks whether the retriever finds, for a prompt naming an entity, the bank
document that defines it (mmgen/data/entities.py): the hybrid retriever (when the bank has a name lookup),
the dual encoder alone, BM25 over the whole bank's words, bag-of-words over text pieces and random ranking.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from mmgen.data.entities import scene_entities
from mmgen.eval.intervals import ratio_interval, wilson_interval
from mmgen.eval.likelihood import continuation_logprobs
from mmgen.retrieval.documents import embed_documents, split_document
from mmgen.retrieval.lexical import LexicalIndex, document_texts


@torch.inference_mode()
def main_document_bits(model, documents: Sequence[np.ndarray], prefixes: Sequence[np.ndarray], *, image_range: tuple[int, int],
                       max_len: int) -> dict[str, float]:
    """Bits per text token and per image token of ``documents`` (each starting with BOS) after their ``prefixes``,
    each with its 95 % interval (a bootstrap over documents, ``<modality>_bits_per_token_ci95``)."""
    per_document = {"text": ([], []), "image": ([], [])}  # (bits, tokens) of each scored document
    for doc, prefix in zip(documents, prefixes):
        body = np.asarray(doc[1:], dtype=np.int64)[: max(0, max_len - len(prefix))]
        if len(body) == 0:
            continue
        logp = continuation_logprobs(model, list(map(int, prefix)), [list(map(int, body))], reuse_prefix=False)[0].numpy()
        is_image = (body >= image_range[0]) & (body < image_range[1])
        for name, mask in (("text", ~is_image), ("image", is_image)):
            per_document[name][0].append(-float(logp[mask].sum()) / math.log(2))
            per_document[name][1].append(int(mask.sum()))
    out = {}
    for name, (bits, tokens) in per_document.items():
        out[f"{name}_bits_per_token"] = sum(bits) / max(sum(tokens), 1)
        out[f"{name}_bits_per_token_ci95"] = [round(x, 4) for x in ratio_interval(bits, tokens)]
        out[f"{name}_tokens"] = sum(tokens)
    return out


def defining_documents(documents) -> dict[str, int]:
    """Bank id of each entity's defining document: a bank-corpus document whose image shows that entity alone.

    ``documents`` is a ``BankDocuments``; its first part is the training shards, whose documents use entities
    but define none."""
    ids: dict[str, int] = {}
    for part in documents.parts[1:]:
        start = documents.offset_of(part)
        for j in range(len(part)):
            names = {n for scene in part.metadata(j).get("images", []) for n in scene_entities(scene)}
            if len(names) == 1:
                ids[names.pop()] = start + j
    return ids


def _text_counts(documents: Sequence[np.ndarray], vocab) -> np.ndarray:
    """Text-piece counts (float32), one row per document."""
    out = np.zeros((len(documents), vocab.text_range[1] - vocab.text_range[0]), dtype=np.float32)
    for i, ids in enumerate(documents):
        np.add.at(out[i], split_document(ids, vocab)[0], 1.0)
    return out


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-9)


def hybrid_ranking(named: np.ndarray, dense: np.ndarray, k: int) -> np.ndarray:
    """[Q, k] bank ids: each row's named documents first, then its dense results not already named (-1 padded)."""
    out = np.full((len(dense), k), -1, dtype=np.int64)
    for q, (first, rest) in enumerate(zip(named, dense)):
        row = list(dict.fromkeys(int(j) for j in (*first, *rest) if j >= 0))[:k]
        out[q, : len(row)] = row
    return out


def defining_document_recall(queries: Sequence[Sequence[int]], targets: Sequence[int], *, encoder, bank, documents,
                             vocab, ks: Sequence[int] = (1, 5), seed: int = 0,
                             text_tokenizer=None) -> dict[str, dict]:  # fmt: skip
    """Recall@k of each query's defining document (bank id ``targets[i]``) among the whole bank's documents, for
    the hybrid retriever (when the bank has a name lookup, ``bank.names``), the dual encoder alone (the bank's own
    index), BM25 over whole words of the whole bank, a bag-of-words retriever (cosine of text-piece counts) and
    random ranking; each with its 95 % Wilson interval over the queries. The word-level rows need the run's
    ``text_tokenizer``. The piece-level baseline weighs pieces by their inverse document frequency in the bank
    (tf-idf), so a rare name outweighs the templates' common words."""
    target = np.asarray(targets, dtype=np.int64)
    n, kmax = len(target), max(ks)
    if n == 0:
        return {}
    query_docs = [np.asarray(q, dtype=np.int64) for q in queries]
    _, dual = bank.search(embed_documents(encoder, query_docs, vocab), kmax)
    ranked = {}
    if text_tokenizer is not None:
        query_texts = document_texts(query_docs, vocab, text_tokenizer)
        names = getattr(bank, "names", None)
        if names is not None:
            ranked["hybrid"] = hybrid_ranking(names.named(query_texts, kmax), dual, kmax)
        ranked["dual_encoder"] = dual
        ranked["bm25"] = LexicalIndex.build(document_texts(documents, vocab, text_tokenizer)).search(query_texts, kmax)[1]
    else:
        ranked["dual_encoder"] = dual
    counts = _text_counts([documents[i] for i in range(len(documents))], vocab)
    idf = (np.log((len(counts) + 1) / ((counts > 0).sum(0) + 1)) + 1).astype(np.float32)
    scores = _unit(_text_counts(query_docs, vocab) * idf) @ _unit(counts * idf).T
    lexical = np.argsort(-scores, axis=1, kind="stable")[:, :kmax]
    rng = np.random.default_rng(seed)
    chance = np.stack([rng.choice(len(documents), size=min(kmax, len(documents)), replace=False) for _ in range(n)])
    report = {}
    for name, ranked in (*ranked.items(), ("bag_of_words", lexical), ("random", chance)):
        report[name] = {}
        for k in ks:
            hits = int((ranked[:, :k] == target[:, None]).any(axis=1).sum())
            lo, hi = wilson_interval(hits, n)
            report[name] |= {f"recall@{k}": hits / n, f"recall@{k}_ci95": [round(lo, 4), round(hi, 4)]}
        report[name]["items"] = n
    return report
