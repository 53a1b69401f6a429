"""Score a stated or detected scene against the ground truth, attribute by attribute.

Every ground-truth shape has four attributes (shape, colour, size, position)
and the scene one more (background). Stated shapes are matched one-to-one to
true shapes by the assignment that gets the most attributes right (the Hungarian
algorithm, scipy's ``linear_sum_assignment``: polynomial, since the analyser's reading
of a noisy image can hold dozens of shapes and trying every assignment would not end);
missing shapes cost their
attributes, and so do surplus ones: a stated shape the scene does not hold
adds its four attributes to the total, all wrong. Without that penalty an image
cluttered with shapes (or a caption listing many) would match more truths by
sheer number, and a generator drawing noise would outscore one that draws the
right count. The same score serves
captions (parsed with ``shapes_world.parse_caption``) and generated images
(read with ``scene_analyser.analyse_scene``). The chance level of a set of
predictions is the same score with predictions paired with other items'
ground truth (a permutation baseline measured on the same predictions).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

from mmgen.data.shapes_world import parse_background, parse_caption
from mmgen.eval.intervals import ratio_interval

ATTRIBUTES = ("shape", "color", "size", "position")


def caption_scene(text: str) -> dict:
    """The scene a caption states: parsed shapes and background (None when unstated)."""
    return {"background": parse_background(text), "shapes": parse_caption(text)}


def attribute_score(truth: dict, stated: dict) -> tuple[int, int]:
    """(attributes stated correctly, attributes in the truth plus those of surplus stated shapes)."""
    true_shapes = truth["shapes"]
    surplus = max(0, len(stated["shapes"]) - len(true_shapes))
    stated_shapes = list(stated["shapes"])
    total = len(ATTRIBUTES) * (len(true_shapes) + surplus) + 1
    background = int(stated.get("background") == truth["background"])
    if not true_shapes or not stated_shapes:
        return background, total
    agree = np.array([[sum(t[a] == s.get(a) for a in ATTRIBUTES) for s in stated_shapes] for t in true_shapes],
                     dtype=np.int64)
    # agreements are never negative, so a largest one-to-one matching is as good as any partial one
    rows, cols = linear_sum_assignment(agree, maximize=True)
    return int(agree[rows, cols].sum()) + background, total


def caption_states_scene(caption: str, scene: dict) -> bool:
    """Whether ``caption`` states every attribute of the ground-truth ``scene`` and no shape it does not hold
    (False for metadata that is not a scene): a caption that is simply right."""
    if not isinstance(scene.get("shapes"), list) or "background" not in scene:
        return False
    right, total = attribute_score(scene, caption_scene(caption))
    return right == total


def attribute_scores(truths: Sequence[dict], stated: Sequence[dict]) -> list[tuple[int, int]]:
    """``attribute_score`` of each item."""
    return [attribute_score(t, s) for t, s in zip(truths, stated, strict=True)]


def pooled_accuracy(scores: Sequence[tuple[int, int]]) -> float:
    """Share of all attributes right over items scored by ``attribute_score``."""
    return sum(c for c, _ in scores) / max(1, sum(n for _, n in scores))


def pooled_accuracy_interval(scores: Sequence[tuple[int, int]], *, seed: int = 0) -> tuple[float, float]:
    """95 % bootstrap interval (over items) of ``pooled_accuracy``."""
    return ratio_interval([c for c, _ in scores], [n for _, n in scores], seed=seed)


def attribute_accuracy(truths: Sequence[dict], stated: Sequence[dict]) -> float:
    """Share of all true attributes stated correctly (pooled over items)."""
    return pooled_accuracy(attribute_scores(truths, stated))


def attribute_accuracy_with_interval(truths: Sequence[dict], stated: Sequence[dict], *,
                                     seed: int = 0) -> tuple[float, tuple[float, float]]:  # fmt: skip
    """``attribute_accuracy`` and its 95 % bootstrap interval (over items), each item scored once."""
    scores = attribute_scores(truths, stated)
    return pooled_accuracy(scores), pooled_accuracy_interval(scores, seed=seed)


def permutation_chance(truths: Sequence[dict], stated: Sequence[dict], *, rounds: int = 20, seed: int = 0) -> float:
    """Mean ``attribute_accuracy`` with predictions paired with shuffled ground truth (derangements)."""
    n = len(truths)
    if n < 2:
        return float("nan")
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(rounds):
        shift = int(rng.integers(1, n))  # a random cyclic shift never pairs an item with itself
        order = rng.permutation(n)
        shuffled = [None] * n
        for k in range(n):
            shuffled[order[k]] = truths[order[(k + shift) % n]]
        values.append(attribute_accuracy(shuffled, stated))
    return float(np.mean(values))


def label_chance(truth: Sequence[str], predicted: Sequence[str], *, rounds: int = 20, seed: int = 0) -> float:
    """Top-1 accuracy of the same predictions against shuffled labels (the classifier's chance level)."""
    truth, predicted = np.asarray(truth), np.asarray(predicted)
    rng = np.random.default_rng(seed)
    return float(np.mean([(rng.permutation(truth) == predicted).mean() for _ in range(rounds)])) if len(truth) else float("nan")
