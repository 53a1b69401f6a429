"""Concept balancing of a corpus by its text, as MetaCLIP balances web pairs against its metadata.

Each document's text is matched against a list of concepts (a concept matches when it occurs as whole words,
case-insensitively); a concept that ``cap`` or fewer documents match keeps them all, a more frequent one keeps
each of its documents with probability ``cap / count``, and a document survives when any of its concepts
keeps it. The head of a long-tailed distribution is flattened to about ``cap`` per concept while the tail is
untouched. Documents that match no concept are kept or dropped by choice (MetaCLIP drops them).

Dropping documents once removes the head's variety for good; with the data repeated over several passes, that
cost more than the tail gained (docs/BENCHMARKS.md, issue 18 part 5). ``sampling_probabilities`` gives the same
balance per pass instead: every document stays, and the loader draws each pass's documents with those
probabilities (MetaCLIP's online balancing).
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Sequence

import fsspec
import numpy as np

from mmgen.data.reading import CorpusError
from mmgen.data.world_noise import CONCEPTS as WORLD_CONCEPTS

WORLD = "world"
"""The concept list named 'world': the shapes world's 18 colour-shape combinations ('red circle')."""


def read_concepts(spec: str) -> list[str]:
    """``world``, or a text file (any fsspec URL) of one concept per line; blank lines and '#' lines are skipped."""
    if spec == WORLD:
        return list(WORLD_CONCEPTS)
    fs, path = fsspec.core.url_to_fs(spec)
    if not fs.isfile(path):
        raise CorpusError(f"no concept list at {spec} (one concept per line, or 'world')")
    with fs.open(path, "rb") as f:
        try:
            lines = f.read().decode("utf-8").splitlines()
        except UnicodeDecodeError:
            raise CorpusError(f"concept list {spec} is not UTF-8 text") from None
    concepts = list(dict.fromkeys(c.strip().lower() for c in lines if c.strip() and not c.lstrip().startswith("#")))
    if not concepts:
        raise CorpusError(f"concept list {spec} names no concept")
    return concepts


def match_concepts(texts: Sequence[str], concepts: Sequence[str]) -> list[list[int]]:
    """For each text, the indices of the concepts it names (whole words, case-insensitive), each once."""
    # longest first, so 'red circle' is found inside 'large red circle' rather than stopping at a shorter concept
    order = sorted(range(len(concepts)), key=lambda i: -len(concepts[i]))
    index = {concepts[i].lower(): i for i in order}
    pattern = re.compile(r"(?<!\w)(?:" + "|".join(re.escape(concepts[i].lower()) for i in order) + r")(?!\w)")
    return [sorted({index[m.group(0)] for m in pattern.finditer(text.lower())}) for text in texts]


def concept_probabilities(matches: Sequence[Sequence[int]], n_concepts: int, *, cap: int) -> np.ndarray:
    """Each concept's keep probability: min(1, cap / the number of documents naming it)."""
    counts = Counter(c for m in matches for c in m)
    return np.array([min(1.0, cap / counts[c]) if counts[c] else 1.0 for c in range(n_concepts)])


def balance_by_concept(matches: Sequence[Sequence[int]], n_concepts: int, *, cap: int, keep_unmatched: bool,
                       seed: int = 0) -> np.ndarray:  # fmt: skip
    """Keep mask: MetaCLIP's sampling, each concept's documents kept with probability min(1, cap / its count)."""
    p_concept = concept_probabilities(matches, n_concepts, cap=cap)
    rng = np.random.default_rng(seed)
    keep = np.empty(len(matches), dtype=bool)
    for i, m in enumerate(matches):
        keep[i] = keep_unmatched if not m else bool((rng.random(len(m)) < p_concept[list(m)]).any())
    return keep


def sampling_probabilities(matches: Sequence[Sequence[int]], n_concepts: int, *, cap: int) -> np.ndarray:
    """Each document's chance to be kept by ``balance_by_concept`` (any of its concepts keeping it: one minus the
    product of their drop probabilities), 1 for a document naming no concept. Balancing that keeps the data
    draws each pass over the corpus with these probabilities instead of dropping documents once."""
    p_concept = concept_probabilities(matches, n_concepts, cap=cap)
    return np.array([1.0 - float(np.prod(1.0 - p_concept[list(m)])) if m else 1.0 for m in matches])


def concept_counts(matches: Sequence[Sequence[int]], n_concepts: int) -> np.ndarray:
    counts = np.zeros(n_concepts, dtype=np.int64)
    for m in matches:
        counts[list(m)] += 1
    return counts
