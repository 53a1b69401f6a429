"""Choosing a CLIP-score threshold from the corruption's ground truth (mmgen.eval.curation_thresholds): the sweep,
the balanced choice, the document-image and the generated-caption sweeps, and scoring recaptioned pairs."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mmgen.data.document import Document
from mmgen.data.shapes_world import describe_scene
from mmgen.eval.curation_thresholds import (best_threshold, document_thresholds, grid, recaption_thresholds,
                                            recaptioned_pairs, sweep)


def test_the_sweep_counts_good_kept_and_bad_removed_and_the_choice_balances_them():
    scores = [0.9, 0.8, 0.6, 0.5, 0.7, 0.4, 0.3, 0.2]
    good = [True, True, True, True, False, False, False, False]
    rows = sweep(scores, good, [0.45, 0.55, 0.65, 0.85])
    assert [(r["good_kept"], r["bad_removed"]) for r in rows] == [(4, 3), (3, 3), (2, 3), (1, 4)]
    assert rows[1]["good_kept_share"] == 0.75 and rows[1]["youden"] == pytest.approx(0.5)
    assert rows[3]["f1"] == pytest.approx(2 * 1 / (1 + 4))  # 1 item kept, right; 4 good items
    # with good items rare, J keeps a bad item for the last good one; F1 cuts it
    # (J 0.625 against 0.5; F1 0.57 against 0.67)
    rare = sweep([0.9, 0.5, 0.6, 0.55, 0.52, 0.45, 0.4, 0.3, 0.2, 0.1], [True] * 2 + [False] * 8, [0.5, 0.62])
    assert best_threshold(rare, "youden")["threshold"] == 0.5 and best_threshold(rare, "f1")["threshold"] == 0.62
    lo, hi = rows[1]["good_kept_share_ci95"]
    assert lo < 0.75 < hi
    assert best_threshold(rows)["threshold"] == 0.45  # J: 0.75, 0.5, 0.25, 0.25
    assert best_threshold(sweep(scores, good, [0.1, 0.15]))["threshold"] == 0.1  # equals: the lowest
    assert grid(0.4, 0.5) == [0.4, 0.41, 0.42, 0.43, 0.44, 0.45, 0.46, 0.47, 0.48, 0.49, 0.5]


def test_document_images_clean_and_near_duplicates_are_kept_the_rest_removed():
    record = {"clip_threshold": 0.7, "clip_scores": [0.9, 0.6, 0.65, 0.3, 0.5, 0.8],
              "clip_kinds": ["clean", "clean", "near_duplicate", "misaligned", "uninformative", ""]}  # fmt: skip
    d = document_thresholds(record, [0.55, 0.7])
    assert (d["good"], d["bad"], d["used"]) == (3, 2, 0.7)  # the image without ground truth is left out
    assert [(r["good_kept"], r["bad_removed"]) for r in d["rows"]] == [(3, 2), (1, 2)]
    assert d["chosen"]["threshold"] == 0.55
    with pytest.raises(ValueError, match="ground truth"):
        document_thresholds({"clip_threshold": 0.7, "clip_scores": [0.5], "clip_kinds": [""]}, [0.5])


def test_caption_shares_count_the_captions_below_the_run_threshold_as_rejected():
    # 10 removed images; the run accepted 4 captions (2 right); 1 more right caption scored below its threshold
    c = recaption_thresholds([0.75, 0.85, 0.72, 0.9], [False, True, False, True], removed=10, right_total=3,
                             thresholds=[0.7, 0.8, 0.88])  # fmt: skip
    r70, r80, r88 = c["rows"]
    assert (r70["accepted"], r70["accepted_right"], r70["good_kept"], r70["bad_removed"]) == (4, 2, 2, 5)
    assert r70["accepted_share"] == 0.4 and r70["precision"] == 0.5
    assert (r80["accepted"], r80["accepted_right"], r80["precision"], r80["bad_removed"]) == (2, 2, 1.0, 7)
    assert (r88["accepted"], r88["accepted_right_share"]) == (1, 0.1)
    assert c["chosen"]["threshold"] == 0.8 and (c["removed"], c["right"]) == (10, 3)
    with pytest.raises(ValueError, match="do not fit"):
        recaption_thresholds([0.8, 0.9], [True, True], removed=5, right_total=1, thresholds=[0.8])


class RedEmbedder:
    """Images embed by their red channel, texts by whether they say 'red': a red image scores 1 with 'red'."""

    dim = 2

    def embed_images(self, images):
        red = np.array([np.asarray(im, dtype=np.float32)[..., 0].mean() / 255 for im in images])
        v = np.stack([red, 1 - red], axis=1)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    def embed_texts(self, texts):
        return np.array([[1.0, 0.0] if "red" in t else [0.0, 1.0] for t in texts])


def test_recaptioned_pairs_are_scored_and_checked_against_their_scene():
    scene = {"background": "white", "shapes": [{"shape": "circle", "color": "red", "size": "large", "position": "center"}]}
    red = Image.new("RGB", (8, 8), (255, 0, 0))
    right = describe_scene(scene)
    docs = [Document(parts=["a red thing", red], image_metadata=[dict(scene)]),  # an original pair: left out
            Document(parts=[right, red], image_metadata=[{**scene, "recaptioned_from": "IMG_1.jpg"}]),
            Document(parts=["a small blue square", red], image_metadata=[{**scene, "recaptioned_from": "click here"}])]
    scores, correct = recaptioned_pairs(docs, RedEmbedder())
    assert scores == pytest.approx([1.0, 0.0]) and correct == [True, False]
