"""Choosing a CLIP-score threshold from a corruption's ground truth (benchmarks/curation_ablation.py).

A threshold is judged on items of two kinds, ones it should keep (clean document images; right generated
captions) and ones it should remove (misaligned and uninformative images; wrong captions). ``sweep`` gives,
at each threshold, both shares with Wilson 95 % intervals, and ``best_threshold`` picks by one of two scores:
Youden's J (the sum of the two shares less one) weighs a lost good item and a kept bad one alike whatever
their counts, right where the two kinds are of a size (clean and corrupted document images, 63:37); F1 of the
good items (the harmonic mean of the share of kept items that are good and the share of good items kept)
asks that what is kept be mostly good, right where good items are rare (right generated captions, 1 in 40),
since J would then keep nearly every bad item for the last good one. The choice is made on the training
split's ground truth: the held-out split is never curated.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from mmgen.data.document import Document
from mmgen.eval.attributes import caption_states_scene
from mmgen.eval.intervals import wilson_interval
from mmgen.retrieval.corpus_curation import ImageEmbeddings, embed_texts
from mmgen.retrieval.curation import alignment_scores
from mmgen.retrieval.embedder import Embedder


def sweep(scores: Sequence[float], good: Sequence[bool], thresholds: Sequence[float]) -> list[dict[str, Any]]:
    """Per threshold: the good items kept and the bad ones removed (counts, shares, Wilson 95 % intervals),
    Youden's J and the good items' F1."""
    scores, good = np.asarray(scores, dtype=np.float64), np.asarray(good, dtype=bool)
    n_good, n_bad = int(good.sum()), int((~good).sum())
    rows = []
    for t in thresholds:
        kept = scores >= t
        row: dict[str, Any] = {"threshold": round(float(t), 4)}
        for key, hits, n in (("good_kept", int((kept & good).sum()), n_good), ("bad_removed", int((~kept & ~good).sum()), n_bad)):
            row[key] = hits
            row[f"{key}_share"] = hits / n if n else float("nan")
            row[f"{key}_share_ci95"] = [round(x, 4) for x in wilson_interval(hits, n)]
        row["youden"] = row["good_kept_share"] + row["bad_removed_share"] - 1
        kept_n = row["good_kept"] + n_bad - row["bad_removed"]
        row["f1"] = 2 * row["good_kept"] / (kept_n + n_good) if kept_n + n_good else 0.0
        rows.append(row)
    return rows


def best_threshold(rows: list[dict[str, Any]], by: str = "youden") -> dict[str, Any]:
    """The row of ``sweep`` with the largest ``by`` ('youden' or 'f1'; the lowest threshold among equals)."""
    if not rows:
        raise ValueError("no threshold to choose from")
    return max(rows, key=lambda r: (r[by], -r["threshold"]))


def grid(low: float, high: float, step: float = 0.01) -> list[float]:
    """Thresholds from ``low`` to ``high`` inclusive."""
    return [round(float(t), 4) for t in np.arange(low, high + step / 2, step)]


CLEAN_KINDS = ("clean", "near_duplicate")
"""Injected kinds whose image and text agree: a filter should keep them."""


def document_thresholds(record: dict[str, Any], thresholds: Sequence[float]) -> dict[str, Any]:
    """The sweep over a curation record's scored images (``curation.json`` of an interleaved corpus made with
    ``world.noise_*``): clean images are to keep, misaligned and uninformative ones to remove; chosen by J."""
    scored = [(s, k in CLEAN_KINDS) for s, k in zip(record["clip_scores"], record["clip_kinds"]) if k]
    if not scored:
        raise ValueError("the curation record has no scores with noise ground truth")
    scores, good = zip(*scored)
    rows = sweep(scores, good, thresholds)
    return {"rows": rows, "chosen": best_threshold(rows, "youden"), "used": record["clip_threshold"],
            "good": int(sum(good)), "bad": len(good) - int(sum(good))}  # fmt: skip


def recaption_thresholds(scores: Sequence[float], right: Sequence[bool], *, removed: int, right_total: int,
                         thresholds: Sequence[float]) -> dict[str, Any]:  # fmt: skip
    """The sweep over generated captions: right ones are to keep, wrong ones to remove. ``scores`` and ``right``
    are those of the captions a run accepted (its recaptioned pairs); the other ``removed - len(scores)`` images'
    captions, ``right_total - sum(right)`` of them right, scored below the run's threshold, so every threshold
    swept must be at least that one. Each row adds the captions accepted, and the right ones among them, as
    shares of the removed images, and the right share of the accepted (precision), with Wilson 95 % intervals;
    chosen by F1."""
    rejected = removed - len(scores)
    rejected_right = right_total - int(sum(right))
    if rejected < 0 or not 0 <= rejected_right <= rejected:
        raise ValueError(f"{len(scores)} accepted captions ({int(sum(right))} right) do not fit {removed} removed "
                         f"images ({right_total} right)")  # fmt: skip
    all_scores = [*scores, *[-np.inf] * rejected]
    all_right = [*right, *[True] * rejected_right, *[False] * (rejected - rejected_right)]
    rows = sweep(all_scores, all_right, thresholds)
    for row in rows:
        accepted, accepted_right = int(np.sum(np.asarray(scores) >= row["threshold"])), row["good_kept"]
        row["accepted"], row["accepted_right"] = accepted, accepted_right
        for key, hits, n in (("accepted_share", accepted, removed), ("accepted_right_share", accepted_right, removed),
                             ("precision", accepted_right, accepted)):  # fmt: skip
            row[key] = hits / n if n else float("nan")
            row[f"{key}_ci95"] = [round(x, 4) for x in wilson_interval(hits, n)]
    return {"rows": rows, "chosen": best_threshold(rows, "f1"), "removed": removed, "right": right_total}


def recaptioned_pairs(docs: Sequence[Document], embedder: Embedder) -> tuple[list[float], list[bool]]:
    """The CLIP score and rightness (by the world's caption parser) of each recaptioned pair among ``docs`` (a
    curated caption corpus; recaptioned pairs carry ``recaptioned_from``)."""
    recaptioned = [d for d in docs if d.image_metadata and "recaptioned_from" in d.image_metadata[0]]
    images = ImageEmbeddings(embedder).of([d.images[0] for d in recaptioned])
    captions = [" ".join(d.texts) for d in recaptioned]
    scores = alignment_scores(images, embed_texts(embedder, captions))
    right = [caption_states_scene(c, d.image_metadata[0]) for c, d in zip(captions, recaptioned)]
    return [float(s) for s in scores], right
