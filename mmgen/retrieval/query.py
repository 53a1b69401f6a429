"""Retrieval at inference: the memory bank searched for a sampling prompt, under training's rules.

``retrieve_for_prompt`` embeds a prompt's tokens (its text and any images) with
the run's dual encoder, searches the bank of retrieval/build_index.py and keeps
candidates as training's selection does: both modalities, no exact duplicate of
the prompt, not too similar to the prompt or to a neighbour already kept. A bank
built with the hybrid retriever puts the bank-corpus documents the prompt names
first (name_lookup.py), as training's neighbour tables do. The
bank's ids index the training token shards it was built over, so the retrieved
documents are read from there and can be put before the prompt with
``retrieved_prefix`` exactly like a training document's neighbours.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Sequence

import fsspec
import numpy as np

from mmgen.config.errors import ConfigError
from mmgen.config.paths import StaleInputError
from mmgen.retrieval.augment import body, fit_retrieved, retrieved_prefix
from mmgen.retrieval.documents import embed_documents, has_both_modalities, split_document
from mmgen.retrieval.encoder import DualEncoder
from mmgen.retrieval.lexical import document_texts
from mmgen.retrieval.memory_bank import MemoryBank
from mmgen.retrieval.name_lookup import NameLookup
from mmgen.retrieval.selection import centred, choose_neighbours, content_hash


@dataclass
class Retrieved:
    bank_id: int
    """Index of the document in the token shards the bank was built over."""
    similarity: float
    """Cosine similarity of its embedding to the prompt's."""
    tokens: np.ndarray
    """Its token sequence (BOS … EOS)."""


def load_retriever(encoder_dir: str, bank_dir: str, *, device="cpu") -> tuple[DualEncoder, MemoryBank]:
    """The run's encoder and memory bank (with its name lookup as ``bank.names`` when it was built hybrid);
    a clear error naming what is missing."""
    missing = []
    for folder, name in ((encoder_dir, "encoder.json"), (bank_dir, "index.faiss")):
        fs, root = fsspec.core.url_to_fs(folder)
        if not fs.exists(posixpath.join(root, name)):
            missing.append(posixpath.join(folder, name))
    if missing:
        raise FileNotFoundError(f"missing {', '.join(missing)} (run retrieval/train_encoder.py and "
                                f"retrieval/build_index.py first)")  # fmt: skip
    bank = MemoryBank.load(bank_dir)
    bank.names = NameLookup.load(bank_dir)
    return DualEncoder.load(encoder_dir, device=device), bank


def retrieve_for_prompt(
    prompt_ids: Sequence[int],
    *,
    encoder: DualEncoder,
    bank: MemoryBank,
    documents,
    vocab,
    k: int,
    candidates: int = 32,
    max_similarity: float = 0.95,
    centred_similarity: bool = True,
    text_tokenizer=None,
) -> list[Retrieved]:
    """Up to ``k`` bank documents for the prompt, most similar first.

    ``documents`` is what the bank was built over (the training ``TokenShards``):
    ``documents[bank_id]`` is a token sequence. ``centred_similarity`` measures
    the near-duplicate tests around the bank's mean vector, as training does.
    A bank with a name lookup (``bank.names``) needs the run's ``text_tokenizer`` to read the prompt's words.
    """
    if k <= 0:
        return []
    if bank.index.ntotal != len(documents) or (len(bank.doc_ids) and int(bank.doc_ids.max()) >= len(documents)):
        raise StaleInputError(f"the memory bank holds {bank.index.ntotal} documents, the token shards "
                              f"{len(documents)}: rerun retrieval/build_index.py")
    prompt = np.asarray(prompt_ids, dtype=np.int64)
    text, grids = split_document(prompt, vocab)
    if len(text) == 0 and len(grids) == 0:
        # a user's empty sample.prompt: a one-line error from the CLI, not a traceback
        raise ConfigError("the prompt holds no text and no image to retrieve documents with")
    named: list[int] = []
    names = bank.names
    if names is not None:
        if text_tokenizer is None:
            raise ValueError("this memory bank has a name lookup: retrieve_for_prompt needs the run's text tokenizer")
        named = [int(j) for j in names.named(document_texts([prompt], vocab, text_tokenizer), k)[0] if j >= 0]
    query = embed_documents(encoder, [prompt], vocab)
    _, dense = bank.search(query, max(candidates, k))
    ids = np.array(named + [int(j) for j in dense[0] if j >= 0 and int(j) not in named], dtype=np.int64)
    docs = [documents[int(j)] for j in ids]
    # the diversity rule needs the candidates' vectors, which an approximate index need not keep: embed them again
    embeddings = embed_documents(encoder, docs, vocab) if docs else np.zeros((0, encoder.dim), np.float32)
    centre = bank.centre if centred_similarity else None
    around = centred(embeddings, centre)
    local = choose_neighbours(
        (around @ centred(query, centre)[0])[None], np.arange(len(ids))[None], np.array([-2]), embeddings=around,
        content_hashes=np.array([content_hash(d) for d in docs], dtype=np.int64),
        multimodal=has_both_modalities(docs, vocab), query_hashes=np.array([content_hash(prompt)]),
        k=k, max_similarity=max_similarity, named=np.arange(len(named))[None],
    )[0]
    similarity = embeddings @ query[0]
    return [Retrieved(bank_id=int(ids[j]), similarity=float(similarity[j]), tokens=docs[j]) for j in local if j >= 0]


@dataclass
class PromptWithContext:
    tokens: list[int]
    """``BOS r1 SEP r2 SEP prompt…``: the prompt after its retrieved context."""
    context_len: int
    """Tokens of the context prefix (BOS to the last SEP); 0 without context."""
    context: list[dict]
    """What the model was given: each context document's record with its kept ``tokens`` and ``cut``."""
    note: str = ""
    """Says how the context was cut to fit, when it was."""


def prompt_with_context(prompt: list[int], context: list[dict], vocab, *, seq_len: int,
                        max_new_tokens: int) -> PromptWithContext:  # fmt: skip
    """Put retrieved documents (records with their ``tokens``, BOS … EOS) before a prompt in the training
    layout of retrieval-augmented documents, cut like a training sequence: the prompt and the tokens to
    sample keep their room in ``seq_len + 1`` tokens, and the context gives way (``fit_retrieved``)."""
    if not context:
        return PromptWithContext(list(prompt), 0, [])
    room = max(seq_len + 1 - (len(prompt) - 1) - max_new_tokens, 1)
    bodies = [body(d["tokens"], bos=vocab.bos, eos=vocab.eos) for d in context]
    kept = fit_retrieved(bodies, room, boi=vocab.boi, eoi=vocab.eoi)
    note = ""
    if kept != [len(b) for b in bodies]:
        note = (f"retrieved context cut to {sum(kept)} of {sum(map(len, bodies))} tokens (kept per document: {kept}) "
                f"to fit training.seq_len {seq_len} with the prompt and {max_new_tokens} new tokens")
    given = [{**d, "tokens": b[:n].tolist(), "cut": n < len(b)} for d, b, n in zip(context, bodies, kept) if n]
    prefix = retrieved_prefix([d["tokens"] for d in given], bos=vocab.bos, eos=vocab.eos, sep=vocab.sep)
    return PromptWithContext(prefix.tolist() + list(prompt[1:]), len(prefix), given, note)
