"""DataComp's experiment (benchmarks/curation_ablation.py): concept groups, their evaluation scenes, the arms'
metrics, recaptioning's figures and the tables."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bad_inputs import assert_one_error_line, run_stage
from corpus_helpers import joint_tokenizer
from mmgen.config import RunPaths, resolve_config
from mmgen.config.schema import ModelConfig, WorldConfig
from mmgen.data.shapes_world import describe_scene, random_scene, render_scene, scene_split
from mmgen.data.token_shards import TokenShardWriter
from mmgen.data.world_noise import CONCEPTS, WorldNoise, concept_counts, concept_groups, concept_probabilities
from mmgen.eval.curation_ablation import TASKS, arm_metrics, comparisons, markdown_tables, recaption_figures
from mmgen.eval.curation_thresholds import document_thresholds, grid, recaption_thresholds
from mmgen.eval.shapes_eval import eval_scenes
from mmgen.model import Transformer
from mmgen.tokenizers.image import ImageTokenizer
from mmgen.tokenizers.text import train_text_tokenizer
from mmgen.tokenizers.vqvae import VQVAE


def test_concept_groups_are_the_most_and_least_common_training_concepts():
    cfg = WorldConfig(concept_tail=1.0)
    rng = np.random.default_rng(0)
    noise = WorldNoise(cfg, "train", "captions")
    scenes = [noise.skew_concepts(random_scene(rng, cfg), rng) for _ in range(3000)] + [{"noise": "clean"}]
    counts = concept_counts(scenes)
    assert sum(counts.values()) == sum(len(s["shapes"]) for s in scenes[:-1])
    groups = concept_groups(counts)
    assert len(groups["head"]) == len(groups["tail"]) == 6 and not set(groups["head"]) & set(groups["tail"])
    assert min(counts[c] for c in groups["head"]) > max(counts[c] for c in groups["tail"])
    # the world's Zipf law over 18 concepts: the six most common draw about 70 % of the shapes, the six rarest 11 %
    p = dict(zip(CONCEPTS, concept_probabilities(cfg)))
    assert sum(p[c] for c in groups["head"]) == pytest.approx(0.701, abs=1e-3)
    assert sum(p[c] for c in groups["tail"]) == pytest.approx(0.112, abs=1e-3)
    assert concept_groups({"red circle": 5, "blue square": 1}, size=1) == {"head": ["red circle"], "tail": [CONCEPTS[-1]]}


def test_scenes_of_given_concepts_stay_in_their_split():
    tail = ["orange circle", "purple triangle", "green triangle"]
    scenes = eval_scenes(40, WorldConfig(), seed=0, max_shapes=1, concepts=tail)
    assert len(scenes) == 40 and all(scene_split(s) == "heldout" for s in scenes)
    assert {f"{s['shapes'][0]['color']} {s['shapes'][0]['shape']}" for s in scenes} <= set(tail)
    assert all(len(s["shapes"]) == 1 for s in scenes)
    several = eval_scenes(40, WorldConfig(), seed=0, concepts=tail)  # every shape of a scene is one of them
    assert all(f"{x['color']} {x['shape']}" in tail for s in several for x in s["shapes"])


def test_arm_metrics_score_all_scenes_and_each_concept_group(tmp_path):
    cfg = resolve_config("debug")
    cfg.eval.heldout_documents, cfg.eval.caption_images, cfg.eval.t2i_prompts, cfg.eval.classify_images = 2, 3, 3, 4
    paths = RunPaths(str(tmp_path))
    scenes = [random_scene(np.random.default_rng(0), cfg.world) for _ in range(6)]
    texts = [f"Here is a drawing. Draw {describe_scene(s)}." for s in scenes]
    text_tok = train_text_tokenizer(texts, cfg.text_tokenizer, paths.text_tokenizer, log=lambda _: None)
    torch.manual_seed(0)
    image_tok = ImageTokenizer(model=VQVAE.from_config(cfg.image_tokenizer), config=cfg.image_tokenizer)
    tokenizer = joint_tokenizer(text_tok, image_tok)
    writer = TokenShardWriter(paths.tokens("heldout"), vocab_size=tokenizer.vocab.size, tokens_per_shard=10_000)
    for s, t in zip(scenes[:2], texts):
        writer.add(tokenizer.encode_parts([t, render_scene(s)]), {})
    writer.close()
    model = Transformer(ModelConfig(dim=32, n_layers=1, n_heads=2, max_seq_len=256), tokenizer.vocab.size)
    model.init_weights()
    groups = {"head": ["red circle", "blue square"], "tail": ["green triangle"]}
    metrics = arm_metrics(cfg, model.eval(), tokenizer, paths.tokens("heldout"), groups)
    assert np.isfinite(metrics["text_bits_per_token"]) and np.isfinite(metrics["image_bits_per_token"])
    for prefix in ("", "head_", "tail_"):
        for key, _ in TASKS:
            value, (lo, hi) = metrics[prefix + key], metrics[f"{prefix}{key}_ci95"]
            assert 0 <= lo <= value <= hi <= 1, prefix + key
        assert metrics[f"{prefix}caption_accuracy_items"] == 3 and metrics[f"{prefix}classify_shape_accuracy_image_given_label_items"] == 4


GROUND_TRUTH = {
    "clean": {"scored": 100, "kept_by_clip": 96, "recaption_correct": 2, "recaptioned": 3, "recaptioned_correct": 2},
    "misaligned": {"scored": 50, "kept_by_clip": 10, "recaption_correct": 12, "recaptioned": 20, "recaptioned_correct": 10},
    "uninformative": {"scored": 20, "kept_by_clip": 0},  # nothing recaptioned: every count 0
}


def test_recaption_figures_are_shares_of_the_removed_images():
    figures = recaption_figures(GROUND_TRUTH)
    m = figures["misaligned"]
    assert (m["removed"], m["recaptioned_correct"], m["recaptioned_wrong"]) == (40, 10, 10)
    assert m["recaptioned_correct_share"] == 0.25 and m["recaption_correct_share"] == 0.3
    lo, hi = m["recaptioned_correct_ci95"]
    assert lo < 0.25 < hi and hi - lo < 0.3
    assert figures["uninformative"]["recaptioned_share"] == 0.0 and figures["uninformative"]["removed"] == 20
    total = figures["all"]
    assert (total["removed"], total["recaptioned"], total["recaptioned_correct"]) == (64, 23, 12)


def _arm(value: float, tokens: int) -> dict:
    metrics = {"text_bits_per_token": 1.0, "image_bits_per_token": 4.0}
    for prefix in ("", "tail_"):
        for key, _ in TASKS:
            metrics |= {prefix + key: value, f"{prefix}{key}_ci95": [value - 0.02, value + 0.02], f"{prefix}{key}_items": 300}
    return {"step": 300, "corpus": {"documents": 10, "caption_pairs": 20, "tokens": tokens}, "metrics": metrics}


def test_markdown_tables_say_whether_the_curated_arm_beats_the_raw_one():
    result = {"split": "heldout", "groups": {"tail": ["green triangle"]}, "training_tokens_each": 1_000,
              "arms": {"raw": _arm(0.50, 1_000), "curated": _arm(0.60, 500)}, "recaption": recaption_figures(GROUND_TRUTH)}
    tables = markdown_tables(result)
    assert "| curated | 10 | 20 | 500 | 2.00 |" in tables  # the curated arm passes twice over its smaller corpus
    assert "| caption | 0.500 [0.480, 0.520], n = 300 | 0.600 [0.580, 0.620], n = 300 | yes |" in tables
    assert "| tail concepts: text-to-image |" in tables and "green triangle" in tables
    assert "| misaligned | 40 | 12 (30.0% [" in tables
    result["arms"]["curated"] = _arm(0.51, 500)
    assert "| caption | 0.500 [0.480, 0.520], n = 300 | 0.510 [0.490, 0.530], n = 300 | within the intervals |" in markdown_tables(result)


def test_a_filter_only_arm_is_compared_with_raw_and_with_the_curated_arm():
    assert comparisons(["raw", "curated"]) == [("curated", "raw")]
    assert comparisons(["raw", "filtered", "curated"]) == [("filtered", "raw"), ("curated", "raw"), ("curated", "filtered")]
    assert comparisons(["filtered", "curated"]) == [("curated", "filtered")]
    result = {"split": "heldout", "groups": {"tail": ["green triangle"]}, "training_tokens_each": 1_000,
              "arms": {"raw": _arm(0.50, 1_000), "filtered": _arm(0.60, 700), "curated": _arm(0.53, 500)}}
    tables = markdown_tables(result)
    assert "| raw | filtered | curated | filtered above raw's interval | curated above raw's interval | " \
           "curated above filtered's interval |" in tables
    # balancing's own effect is the last column: here the curated arm is below the filter-only one
    assert "| tail concepts: caption | 0.500 [0.480, 0.520], n = 300 | 0.600 [0.580, 0.620], n = 300 | " \
           "0.530 [0.510, 0.550], n = 300 | yes | within the intervals | no (worse) |" in tables
    assert "| filtered | 10 | 20 | 700 | 1.43 |" in tables


def test_the_benchmark_names_an_unknown_arm_in_one_error_line(tmp_path):
    status, stderr = run_stage("benchmarks/curation_ablation.py", tmp_path, "--arms", "raw,balanced", small=False)
    assert_one_error_line(status, stderr, "balanced", "raw, filtered, curated")
    assert not (tmp_path / "curation_ablation").exists()


def test_markdown_tables_show_the_threshold_sweeps_with_the_choice():
    record = {"clip_threshold": 0.7, "clip_scores": [0.9, 0.62, 0.66, 0.3, 0.5], "clip_kinds": ["clean"] * 3 + ["misaligned"] * 2}
    captions = recaption_thresholds([0.75, 0.85], [False, True], removed=4, right_total=1, thresholds=grid(0.7, 0.9))
    result = {"split": "heldout", "groups": {}, "training_tokens_each": 1_000, "arms": {"raw": _arm(0.5, 1_000)},
              "thresholds": {"documents": document_thresholds(record, grid(0.4, 0.8)), "recaption": {**captions, "used": 0.7}}}
    tables = markdown_tables(result)
    assert "(3 clean, 2 misaligned or uninformative); chosen: 0.51" in tables
    assert "| 0.70 | 33.3% [" in tables and "| 0.51 | 100.0% [" in tables and "| 0.45 |" in tables and "| 0.46 |" not in tables
    assert "(1 right); chosen: 0.76" in tables
    assert "| 0.76 | 1 (25.0% [" in tables and "| 100.0% [" in tables
