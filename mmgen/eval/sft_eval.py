"""Scoring a model on held-out SFT prompts: captioning, text-to-image (with and without guidance), visual QA.

The prompts are the held-out SFT examples up to where their output starts, so a
pretrained and a fine-tuned checkpoint are scored on exactly the same inputs.
While settings are chosen (guidance scale, SFT mixture, a pretraining option),
the validation SFT examples take their place (``sft_prompts``), so no setting
is chosen on held-out items.
Captions and generated images are scored attribute by attribute against the
scene's ground truth (``mmgen.eval.attributes``), with a permutation chance
level measured on the same predictions; answers by exact match, with chance
one over the number of possible answers of each question kind.
"""

from __future__ import annotations

import posixpath
from collections import defaultdict
from typing import Sequence

import fsspec
import numpy as np
import torch

from mmgen.config.paths import RunPaths

from mmgen.data.sft_tasks import ANSWER_CHOICES
from mmgen.data.token_shards import TokenShards
from mmgen.eval.attributes import (attribute_scores, caption_scene, permutation_chance, pooled_accuracy,
                                   pooled_accuracy_interval)
from mmgen.eval.intervals import paired_ratio_difference_interval, wilson_interval, with_interval
from mmgen.eval.scene_analyser import analyse_scene
from mmgen.files import exists
from mmgen.model.checkpoint import MODEL_FILE, read_model_description
from mmgen.model.lora import add_lora, trainable_share
from mmgen.model.transformer import Transformer
from mmgen.generation.captioning import sampled_text
from mmgen.generation.sampler import SamplingParams, sample_in_batches


@torch.inference_mode()
def sft_eval(model, tokenizer, shards, *, per_task: int = 128, cfg_scales: Sequence[float] = (1.0, 1.5, 3.0), seed: int = 0,
             batch_size: int = 32, temperature: float = 1.0, top_k: int = 64, jacobi_window: int = 0) -> dict:
    vocab = tokenizer.vocab
    by_task: dict[str, list[int]] = defaultdict(list)
    for i in range(len(shards)):
        task = shards.metadata(i)["task"]
        if len(by_task[task]) < per_task:
            by_task[task].append(i)

    def prompts(indices):
        return [shards[i][: shards.metadata(i)["loss_start"]].tolist() for i in indices]

    def run(desc, batch_prompts, **params):
        return sample_in_batches(model, vocab, batch_prompts, SamplingParams(seed=seed, **params), batch_size, desc=desc)

    metrics: dict = {}
    # each item's (right, total) per accuracy, so two checkpoints scored on these prompts compare item by item
    item_scores: dict[str, list[list[int]]] = {}

    def scored(name: str, truths: list[dict], predicted: list[dict]) -> dict:
        """Attribute accuracy over the items with its bootstrap interval, each item's score kept."""
        scores = attribute_scores(truths, predicted)
        item_scores[name] = [list(score) for score in scores]
        return with_interval(name, pooled_accuracy(scores), pooled_accuracy_interval(scores, seed=seed), len(scores))

    if by_task.get("caption"):
        idx = by_task["caption"]
        outs = run("SFT captions", prompts(idx), max_new_tokens=64, temperature=0.0, max_images=0)
        truths = [shards.metadata(i)["scene"] for i in idx]
        stated = [caption_scene(sampled_text(tokenizer, o)) for o in outs]
        metrics |= scored("caption_accuracy", truths, stated)
        metrics["caption_chance"] = permutation_chance(truths, stated, seed=seed)
    if by_task.get("vqa"):
        idx = by_task["vqa"]
        outs = run("SFT visual QA", prompts(idx), max_new_tokens=8, temperature=0.0, max_images=0)
        metas = [shards.metadata(i) for i in idx]
        answers = [sampled_text(tokenizer, o).lower().strip(" .") for o in outs]
        right = sum(a == m["answer"] for a, m in zip(answers, metas))
        item_scores["vqa_accuracy"] = [[int(a == m["answer"]), 1] for a, m in zip(answers, metas)]
        metrics |= with_interval("vqa_accuracy", right / len(idx), wilson_interval(right, len(idx)), len(idx))
        # which questions fail: finding the object a question names (colour, shape, position, size) or not
        for kind in ANSWER_CHOICES:
            asked = [a == m["answer"] for a, m in zip(answers, metas) if m["kind"] == kind]
            if asked:
                metrics[f"vqa_accuracy_{kind}"] = sum(asked) / len(asked)
                metrics[f"vqa_accuracy_{kind}_items"] = len(asked)
        metrics["vqa_chance"] = float(np.mean([1 / len(ANSWER_CHOICES[m["kind"]]) for m in metas]))
    if by_task.get("t2i"):
        idx = by_task["t2i"]
        h, w = vocab.grid
        truths = [shards.metadata(i)["scene"] for i in idx]
        for scale in cfg_scales:
            # guidance at scale 1 samples exactly what no guidance does, so it runs without the extra stream.
            # The unconditional stream is the sampler's (BOS, BOI): the condition-dropped SFT prompt
            # (task, instruction, empty input) scored 0.02 lower on the demo at scales 1.5 and 3.
            unguided = scale in (0.0, 1.0)
            outs = run(f"SFT text-to-image, cfg {scale:g}", [p + [vocab.boi] for p in prompts(idx)], max_new_tokens=h * w + 1, temperature=temperature, top_k=top_k,
                       cfg_scale=0.0 if unguided else scale, max_images=1, eos_stops=False, jacobi_window=jacobi_window)
            grids = [vocab.id_to_code(torch.tensor(o[: h * w])).view(h, w) for o in outs]
            read = [analyse_scene(im) for im in tokenizer.decode_images(grids)]
            name = "t2i_accuracy" if unguided else f"t2i_accuracy_cfg{scale:g}"
            metrics |= scored(name, truths, read)
            if unguided:
                metrics["t2i_chance"] = permutation_chance(truths, read, seed=seed)
    metrics["items_per_task"] = {task: len(v) for task, v in by_task.items()}
    metrics["item_scores"] = item_scores
    return metrics


def paired_gains(tuned: dict, base: dict, *, seed: int = 0) -> dict:
    """``<accuracy>_gain`` of a fine-tuned checkpoint over the base one for every accuracy both were scored on
    item by item (``sft_eval``'s ``item_scores``, the same prompts): the difference of the pooled accuracies with
    its paired bootstrap interval, much narrower than the two accuracies' own intervals when the checkpoints
    agree on most prompts."""
    gains: dict = {}
    for name, scores in tuned.get("item_scores", {}).items():
        other = base.get("item_scores", {}).get(name)
        if other is None or len(other) != len(scores):
            continue
        (c_a, n_a), (c_b, n_b) = zip(*scores), zip(*other)
        gains |= with_interval(f"{name}_gain", tuned[name] - base[name],
                               paired_ratio_difference_interval(c_a, n_a, c_b, n_b, seed=seed), len(scores))
    return gains


def sft_prompts(paths: RunPaths, split: str, config_name: str) -> TokenShards:
    """The SFT examples of ``split`` ('heldout' or 'validation') that tokenizers/encode_sft.py wrote; raises
    FileNotFoundError saying how to make them when they are missing."""
    folder = paths.tokens(f"sft-{split}")
    if not exists(posixpath.join(folder, "manifest.json")):
        make = f"run tokenizers/encode_sft.py --config {config_name}"
        if not exists(paths.caption_pairs(split)):  # a world made before it wrote validation caption pairs
            make = (f"{paths.caption_pairs(split)} is missing too: write it with data/make_world.py (README.md, "
                    f"'Choosing SFT settings'), then {make}")
        raise FileNotFoundError(f"no {split} SFT prompts at {folder} ({make})")
    return TokenShards(folder)


def fine_tuning_runs(paths: RunPaths) -> dict[str, str]:
    """Every fine-tuning run of the run folder by name: a folder named ``sft*`` holding a ``model.json``."""
    fs, root = fsspec.core.url_to_fs(paths.root)
    names = sorted(posixpath.basename(p.rstrip("/")) for p in fs.ls(root, detail=False)
                   if posixpath.basename(p.rstrip("/")).startswith("sft") and fs.exists(posixpath.join(p, MODEL_FILE)))
    if not names:
        raise FileNotFoundError(f"no fine-tuning run under {paths.root} (run train/sft.py first)")
    return {name: paths.sft_dir(name) for name in names}


def lora_trainable_share(folder: str, model) -> float | None:
    """The share of parameters a LoRA fine-tuning in ``folder`` trained; None when it tuned every weight."""
    description = read_model_description(folder)
    if not description.get("lora_rank"):
        return None
    probe = add_lora(Transformer(model.cfg, model.vocab_size), rank=description["lora_rank"], alpha=description["lora_alpha"])
    return trainable_share(probe)
