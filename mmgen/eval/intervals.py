"""95 % intervals for the report's accuracies, so two runs (or two settings) can be compared honestly.

Top-1 accuracies (classification, VQA) are shares of independent yes/no items: Wilson's score interval,
which stays inside [0, 1] and is sound for small n and for shares near 0 or 1. Attribute accuracies pool
the attributes of each item (a scene of three shapes weighs more than one of a single shape) and the
attributes of one item are not independent, so their interval is a percentile bootstrap over items of the
pooled ratio. A difference between two readings of the same items (an infill against its left-context
baseline, a fine-tuned model against its pretrained one on the same prompts) is paired: its interval resamples
items, each keeping both readings, which is much narrower than two separate intervals when the readings agree on
most items.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

Z95 = 1.959963984540054


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial share; (nan, nan) without items."""
    if n <= 0:
        return float("nan"), float("nan")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def ratio_interval(correct: Sequence[float], totals: Sequence[float], *, rounds: int = 2000,
                   seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of sum(correct) / sum(totals), resampling items."""
    c, t = np.asarray(correct, dtype=np.float64), np.asarray(totals, dtype=np.float64)
    if len(c) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(c), size=(rounds, len(c)))
    ratios = c[picks].sum(1) / np.maximum(t[picks].sum(1), 1e-12)
    lo, hi = np.percentile(ratios, [2.5, 97.5])
    return float(lo), float(hi)


def paired_difference_interval(a: Sequence[float], b: Sequence[float], *, rounds: int = 2000,
                               seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of mean(a) - mean(b) for two readings of the same items, resampling items."""
    ones = np.ones(len(a))
    return paired_ratio_difference_interval(a, ones, b, ones, rounds=rounds, seed=seed)


def paired_ratio_difference_interval(correct_a: Sequence[float], totals_a: Sequence[float],
                                     correct_b: Sequence[float], totals_b: Sequence[float], *, rounds: int = 2000,
                                     seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of sum(correct_a) / sum(totals_a) - sum(correct_b) / sum(totals_b) for two
    readings of the same items (two models on the same prompts), each resample keeping both readings of an item."""
    ca, ta, cb, tb = (np.asarray(x, dtype=np.float64) for x in (correct_a, totals_a, correct_b, totals_b))
    if len(ca) == 0:
        return float("nan"), float("nan")
    if not len(ca) == len(ta) == len(cb) == len(tb):
        raise ValueError(f"paired readings need the same items: {len(ca)}, {len(ta)}, {len(cb)}, {len(tb)}")
    picks = np.random.default_rng(seed).integers(0, len(ca), size=(rounds, len(ca)))
    differences = (ca[picks].sum(1) / np.maximum(ta[picks].sum(1), 1e-12)
                   - cb[picks].sum(1) / np.maximum(tb[picks].sum(1), 1e-12))
    lo, hi = np.percentile(differences, [2.5, 97.5])
    return float(lo), float(hi)


def with_interval(name: str, value: float, interval: tuple[float, float], n: int) -> dict:
    """The flat metrics entries of one accuracy: value, its 95 % interval and its number of items."""
    return {name: value, f"{name}_ci95": [round(interval[0], 4), round(interval[1], 4)], f"{name}_items": n}
