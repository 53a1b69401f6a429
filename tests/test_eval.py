"""Evaluation: the scene analyser, attribute scoring, likelihood scoring with prefix reuse, classification."""

from __future__ import annotations

import io
from itertools import permutations

import numpy as np
import pytest
import torch
from PIL import Image

from mmgen.config.schema import WorldConfig
from mmgen.data.shapes_world import describe_scene, random_scene, render_scene, scene_split
from mmgen.eval.attributes import (
    attribute_accuracy,
    attribute_score,
    caption_scene,
    label_chance,
    permutation_chance,
)
from mmgen.eval.classify import (
    classification_metrics,
    confusion_png,
    image_given_label_scores,
    label_given_image_scores,
)
from mmgen.eval.likelihood import bits_per_token, common_prefix_length, continuation_logprobs
from mmgen.eval.scene_analyser import analyse_scene
from mmgen.eval.intervals import (paired_difference_interval, paired_ratio_difference_interval, ratio_interval,
                                  wilson_interval)
from mmgen.eval.shapes_eval import eval_scenes
from mmgen.model import per_token_loss
from mmgen.tokenizers.vocab import Vocab


@pytest.mark.parametrize("image_size", [32, 24, 48])
def test_analyser_reads_own_renders(image_size):
    rng = np.random.default_rng(image_size)
    cfg = WorldConfig(image_size=image_size, max_shapes_per_image=4)
    scenes = [random_scene(rng, cfg) for _ in range(300)]
    read = [analyse_scene(render_scene(s, image_size)) for s in scenes]
    assert attribute_accuracy(scenes, read) >= 0.99
    assert permutation_chance(scenes, read) < 0.5  # the analyser's answers depend on the image


def test_analyser_tolerates_noise_and_blank_images():
    rng = np.random.default_rng(0)
    scenes = [random_scene(rng, WorldConfig()) for _ in range(100)]
    noisy = []
    for s in scenes:
        pixels = np.asarray(render_scene(s), dtype=np.float32) + rng.normal(0, 20, (32, 32, 3))
        noisy.append(analyse_scene(np.clip(pixels, 0, 255)))
    assert attribute_accuracy(scenes, noisy) >= 0.95
    blank = analyse_scene(Image.new("RGB", (32, 32), (0, 0, 0)))
    assert blank == {"background": "black", "shapes": []}


def test_attribute_score_matches_shapes_and_counts_misses():
    scene = {"background": "white", "shapes": [
        {"shape": "circle", "color": "red", "size": "large", "position": "top left"},
        {"shape": "square", "color": "blue", "size": "small", "position": "center"}]}
    assert attribute_score(scene, caption_scene(describe_scene(scene))) == (9, 9)
    # order does not matter; a wrong colour costs one attribute; a missing shape costs four
    swapped = caption_scene("a small green square in the center and a large red circle at the top left, on a white background")
    assert attribute_score(scene, swapped) == (8, 9)
    assert attribute_score(scene, caption_scene("a large red circle at the top left")) == (4, 9)
    assert attribute_score(scene, caption_scene("nothing here")) == (0, 9)
    # a shape the scene does not hold is four wrong attributes, so clutter cannot buy matches
    extra = caption_scene(describe_scene(scene).replace(", on", " and a small green triangle at the bottom right, on"))
    assert len(extra["shapes"]) == 3
    assert attribute_score(scene, extra) == (9, 13)


def _best_matching_by_search(truth: dict, stated: dict) -> int:
    """Reference: every one-to-one partial assignment of stated to true shapes, tried."""
    keys = ("shape", "color", "size", "position")
    options = list(range(len(stated["shapes"]))) + [None] * len(truth["shapes"])
    return max(sum(sum(t[k] == stated["shapes"][j][k] for k in keys) for t, j in zip(truth["shapes"], chosen) if j is not None)
               for chosen in permutations(options, len(truth["shapes"])))


def test_attribute_score_finds_the_best_assignment_and_scales_to_cluttered_readings():
    rng = np.random.default_rng(1)
    world = WorldConfig()
    for _ in range(60):
        truth, guess = random_scene(rng, world), random_scene(rng, world)
        right, total = attribute_score(truth, guess)
        assert right == _best_matching_by_search(truth, guess) + (guess["background"] == truth["background"])
        assert total == 4 * max(len(truth["shapes"]), len(guess["shapes"])) + 1
    # a reading of noise can hold dozens of shapes: scored exactly, not by trying 40! assignments
    many = [{"shape": "circle", "color": c, "size": z, "position": p} for c in ("red", "blue") for z in ("small", "large")
            for p in ("top left", "center", "bottom right", "left", "right")] * 2
    clutter = {"background": "white", "shapes": many}
    assert attribute_score(clutter, {"background": "white", "shapes": many[::-1]}) == (161, 161)


def test_chance_levels():
    truth = ["a", "b", "c"] * 20
    assert label_chance(truth, truth) == pytest.approx(1 / 3, abs=0.08)
    assert label_chance(truth, ["a"] * 60) == pytest.approx(1 / 3)  # a constant guess is at chance
    scenes = eval_scenes(40, WorldConfig(), seed=0)
    assert all(scene_split(s) == "heldout" for s in scenes)
    assert permutation_chance(scenes, scenes) < attribute_accuracy(scenes, scenes) == 1.0


def test_validation_and_heldout_scenes_are_disjoint_from_training():
    rng = np.random.default_rng(3)
    splits = [scene_split(random_scene(rng, WorldConfig())) for _ in range(4000)]
    assert splits.count("validation") / 4000 == pytest.approx(0.1, abs=0.02)
    assert splits.count("heldout") / 4000 == pytest.approx(0.1, abs=0.02)
    validation = eval_scenes(60, WorldConfig(), seed=0, split="validation")
    assert {scene_split(s) for s in validation} == {"validation"}
    heldout = eval_scenes(60, WorldConfig(), seed=0)
    assert not {describe_scene(s) for s in validation} & {describe_scene(s) for s in heldout}


def test_intervals():
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    lo, hi = wilson_interval(0, 10)
    assert lo == 0 and hi == pytest.approx(0.2775, abs=1e-4)
    assert wilson_interval(0, 0)[0] != wilson_interval(0, 0)[0]  # nan without items
    # the bootstrap interval of a pooled ratio holds the estimate and narrows with more items
    rng = np.random.default_rng(0)
    totals = rng.integers(5, 14, size=400)
    correct = rng.binomial(totals, 0.7)
    wide, narrow = ratio_interval(correct[:40], totals[:40]), ratio_interval(correct, totals)
    assert wide[0] < correct[:40].sum() / totals[:40].sum() < wide[1]
    assert narrow[0] < correct.sum() / totals.sum() < narrow[1]
    assert narrow[1] - narrow[0] < (wide[1] - wide[0]) / 2


def test_a_paired_difference_is_told_apart_where_two_separate_intervals_overlap():
    """Two readings of the same 300 items that agree except on 15, all won by the first: the separate Wilson
    intervals overlap, the paired interval of the difference lies above zero and holds it."""
    baseline = (np.random.default_rng(0).random(300) < 0.4).astype(float)
    better = baseline.copy()
    better[np.flatnonzero(baseline == 0)[:15]] = 1.0
    first, second = wilson_interval(int(better.sum()), 300), wilson_interval(int(baseline.sum()), 300)
    assert first[0] < second[1]
    lo, hi = paired_difference_interval(better, baseline)
    assert 0 < lo < 15 / 300 < hi
    assert paired_difference_interval(baseline, baseline) == (0.0, 0.0)
    # mixed wins and losses that cancel: the interval holds zero
    mixed = baseline.copy()
    mixed[np.flatnonzero(baseline == 0)[:15]] = 1.0
    mixed[np.flatnonzero(baseline == 1)[:15]] = 0.0
    lo, hi = paired_difference_interval(mixed, baseline)
    assert lo < 0 < hi


def test_a_paired_ratio_difference_pools_attributes_and_resamples_items_together():
    """Two checkpoints' attribute scores on the same 300 prompts (right, total per prompt): the second draws one
    attribute more right on 20 prompts. The paired interval holds the pooled difference and lies above zero,
    where the separate intervals overlap; with totals of one it is the paired mean difference's interval."""
    rng = np.random.default_rng(1)
    totals = rng.integers(5, 14, size=300).astype(float)
    base = np.floor(totals * 0.85)
    tuned = base.copy()
    tuned[:20] += 1
    assert ratio_interval(tuned, totals)[0] < ratio_interval(base, totals)[1]
    lo, hi = paired_ratio_difference_interval(tuned, totals, base, totals)
    assert 0 < lo < (tuned.sum() - base.sum()) / totals.sum() < hi
    ones, hits = np.ones(300), (rng.random(300) < 0.5).astype(float)
    assert paired_ratio_difference_interval(hits, ones, base / totals, ones) == paired_difference_interval(hits, base / totals)
    with pytest.raises(ValueError, match="same items"):
        paired_ratio_difference_interval(tuned, totals, base[:-1], totals[:-1])


VOCAB = Vocab.build(text_vocab_size=20, codebook_size=16, grid=(2, 2))


def _direct_logprobs(model, prefix, continuation):
    seq = torch.tensor([prefix + continuation])
    with torch.no_grad():
        logits = model(seq[:, :-1])
    return -per_token_loss(logits, seq[:, 1:])[0, len(prefix) - 1:]


def test_prefix_reuse_equals_full_forward(model):
    T0 = VOCAB.text_range[0]
    prefix = [VOCAB.bos, T0 + 1, T0 + 2]
    conts = [[T0 + 3], [T0 + 4, T0 + 5, T0 + 6], [], [T0 + 7, T0 + 8]]
    reused = continuation_logprobs(model, prefix, conts, batch_size=3, reuse_prefix=True)
    plain = continuation_logprobs(model, prefix, conts, batch_size=2, reuse_prefix=False)
    for c, a, b in zip(conts, reused, plain):
        assert a.shape == (len(c),)
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
        if c:
            torch.testing.assert_close(a, _direct_logprobs(model, prefix, c), atol=1e-4, rtol=1e-4)
    assert common_prefix_length([[1, 2, 3], [1, 2, 4], [1, 2]]) == 2


def test_classification_scores_both_directions(model):
    T0, I0 = VOCAB.text_range[0], VOCAB.image_range[0]
    grids = [torch.tensor([[0, 1], [2, 3]]), torch.tensor([[4, 5], [6, 7]])]
    prompts = [[VOCAB.bos, T0 + 1, T0 + 2 + n] for n in range(3)]
    a = image_given_label_scores(model, VOCAB, grids, [prompts, prompts], batch_size=4)
    b = image_given_label_scores(model, VOCAB, grids, [prompts, prompts], reuse_prefix=False)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    codes = [I0 + c for c in range(4)]
    expected = _direct_logprobs(model, prompts[1] + [VOCAB.boi], codes).sum()
    torch.testing.assert_close(a[0, 1], expected, atol=1e-4, rtol=1e-4)
    texts = [[T0 + 5, T0 + 6 + n] for n in range(3)]
    c = label_given_image_scores(model, VOCAB, grids, [VOCAB.bos], [texts, texts], batch_size=2)
    assert c.shape == (2, 3)
    image = [VOCAB.boi, *(I0 + t for t in grids[1].flatten().tolist()), VOCAB.eoi]
    expected = _direct_logprobs(model, [VOCAB.bos, *image, T0 + 5], [T0 + 8]).sum()
    torch.testing.assert_close(c[1, 2], expected, atol=1e-4, rtol=1e-4)
    calibrated = label_given_image_scores(model, VOCAB, grids, [VOCAB.bos], [texts, texts], calibrate=True)
    assert not torch.allclose(calibrated, c)


def test_classification_metrics_and_confusion_png():
    scores = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0], [5.0, 0.0, 1.0], [0.0, 0.0, 9.0]])
    m = classification_metrics(scores, [0, 1, 2, 2], ["x", "y", "z"])
    assert m["top1"] == 0.75 and m["top5"] == 1.0
    assert m["per_class"] == {"x": 1.0, "y": 1.0, "z": 0.5}
    assert m["confusion"] == [[1, 0, 0], [0, 1, 0], [1, 0, 1]]
    png = Image.open(io.BytesIO(confusion_png(m["confusion"], ["x", "y", "z"])))
    assert png.size[0] > 100


def test_bits_per_token_splits_modalities(model):
    T0, I0 = VOCAB.text_range[0], VOCAB.image_range[0]
    doc = np.array([VOCAB.bos, T0 + 1, VOCAB.boi, I0, I0 + 1, I0 + 2, I0 + 3, VOCAB.eoi, T0 + 2, VOCAB.eos])
    short = doc[:4]
    result = bits_per_token(model, [doc, short], image_range=VOCAB.image_range, pad_id=VOCAB.pad, max_len=64,
                            batch_size=2)
    with torch.no_grad():
        nll = per_token_loss(model(torch.tensor(doc[None, :-1])), torch.tensor(doc[None, 1:]))[0]
        nll_short = per_token_loss(model(torch.tensor(short[None, :-1])), torch.tensor(short[None, 1:]))[0]
    is_image = torch.tensor([VOCAB.is_image(int(t)) for t in doc[1:]])
    image_nats = torch.cat([nll[is_image], nll_short[2:]])  # short's last target (I0) is an image code
    text_nats = torch.cat([nll[~is_image], nll_short[:2]])
    assert result["image_tokens"] == 5 and result["text_tokens"] == 7
    assert result["image_bits_per_token"] == pytest.approx(float(image_nats.mean()) / np.log(2), rel=1e-4)
    assert result["text_bits_per_token"] == pytest.approx(float(text_nats.mean()) / np.log(2), rel=1e-4)


def test_grouped_prefixes_of_different_lengths(model):
    from mmgen.eval.likelihood import grouped_continuation_logprobs

    T0 = VOCAB.text_range[0]
    groups = [([VOCAB.bos], [[T0 + 1, T0 + 2], [T0 + 3]]),
              ([VOCAB.bos, T0 + 4, T0 + 5, T0 + 6, T0 + 7], [[T0 + 8], [], [T0 + 9, T0 + 10, T0 + 11]])]
    reused = grouped_continuation_logprobs(model, groups, batch_size=2, reuse_prefix=True)
    plain = grouped_continuation_logprobs(model, groups, batch_size=3, reuse_prefix=False)
    for (prefix, conts), a_group, b_group in zip(groups, reused, plain):
        for c, a, b in zip(conts, a_group, b_group):
            assert a.shape == b.shape == (len(c),)
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
            if c:
                torch.testing.assert_close(a, _direct_logprobs(model, prefix, c), atol=1e-4, rtol=1e-4)
