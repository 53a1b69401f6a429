"""The shapes-world measurements of the report: captioning, text-to-image and classification.

Scenes come from the held-out split of the run's world (``scene_split``), or
from its validation split while settings are being chosen, so none was seen in training; they are rendered exactly as the corpus renders
them and VQ-encoded like training images. Each measurement returns its
accuracy, the chance level measured on the same predictions (permutation
baseline, see attributes.py) and the items for the report's grid.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image

from mmgen.config.schema import EvalConfig, WorldConfig
from mmgen.data.document import Document
from mmgen.data.shapes_world import (COLORS, SHAPES, describe_scene, random_document, random_scene, render_scene,
                                     scene_split, split_rng)
from mmgen.data.token_shards import TokenShards
from mmgen.eval.attributes import (attribute_accuracy, attribute_accuracy_with_interval, caption_scene,
                                   permutation_chance)
from mmgen.eval.classify import classify_both_ways
from mmgen.eval.intervals import with_interval
from mmgen.eval.scene_analyser import analyse_scene
from mmgen.generation.captioning import caption_images
from mmgen.generation.sampler import SamplingParams, sample
from mmgen.progress import progress_bar, sampler_progress

_KEYS = ("shape", "color", "size", "position")


def eval_scenes(count: int, world: WorldConfig, *, seed: int, max_shapes: int | None = None,
                split: str = "heldout", concepts: Sequence[str] | None = None) -> list[dict]:
    """``count`` scenes of the held-out (or validation) split, attributes only, reproducible by seed; with
    ``concepts`` ('red circle', ...) only scenes whose every shape is one of them."""
    cfg = dataclasses.replace(world, max_shapes_per_image=max_shapes or world.max_shapes_per_image)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 7]))
    allowed = set(concepts) if concepts is not None else None
    scenes = []
    while len(scenes) < count:
        scene = random_scene(rng, cfg)
        if scene_split(scene) != split:
            continue
        if allowed is not None and any(f"{s['color']} {s['shape']}" not in allowed for s in scene["shapes"]):
            continue
        scenes.append({"background": scene["background"], "shapes": [{k: s[k] for k in _KEYS} for s in scene["shapes"]]})
    return scenes


def world_documents(tokenizer, world: WorldConfig, count: int, split: str) -> list[np.ndarray]:
    """The first ``count`` documents of the world's ``split`` (its own random stream, as ``data/make_world.py``
    would write them, without training's noise), token ids encoded like the corpus: the validation split's
    documents, which no stage writes, for choosing settings without touching held-out ones."""
    rng = split_rng(world.seed, split, "documents")
    docs = [Document(parts=[item if isinstance(item, str) else render_scene(item, world.image_size)
                            for item in random_document(rng, world, split)]) for _ in range(count)]  # fmt: skip
    return [np.asarray(ids, dtype=np.int64) for ids in tokenizer.encode_documents(docs)]


def split_documents(paths, tokenizer, world: WorldConfig, split: str, count: int) -> Sequence[np.ndarray]:
    """The first ``count`` documents (0: every held-out one) of the evaluation ``split``, token ids: the held-out
    token shards, or while settings are chosen the world's validation documents (``world_documents``), so a
    validation report reads no held-out document, its bits per token included."""
    if split == "heldout":
        shards = TokenShards(paths.tokens("heldout"))
        return [shards[i] for i in range(len(shards) if count <= 0 else min(count, len(shards)))]
    return world_documents(tokenizer, world, count if count > 0 else len(TokenShards(paths.tokens("heldout"))), split)


def _untimed(name: str, fn: Callable[[], Any]) -> Any:
    return fn()


def shapes_accuracies(model, tokenizer, cfg: EvalConfig, world: WorldConfig, *, concepts: Sequence[str] | None = None,
                      prefix: str = "", timed: Callable[[str, Callable[[], Any]], Any] = _untimed) -> tuple[dict, dict]:
    """Caption, text-to-image and classification accuracy on ``cfg.split`` scenes, each with its interval, items
    and chance level, as flat metrics named ``prefix`` + the report's names; also the raw results ('caption',
    't2i', 'classes') for the report's pages. With ``concepts``: one-shape scenes of those concepts only, for
    every task (the accuracy on rare or common concepts)."""
    size = world.image_size
    shapes = 1 if concepts is not None else None
    scenes = lambda count, offset, most: eval_scenes(count, world, seed=cfg.seed + offset, split=cfg.split,
                                                     max_shapes=most, concepts=concepts)  # fmt: skip
    caption = timed("captions", lambda: caption_eval(model, tokenizer, scenes(cfg.caption_images, 0, shapes), cfg, size))
    t2i = timed("text-to-image", lambda: t2i_eval(model, tokenizer, scenes(cfg.t2i_prompts, 1, shapes), cfg, size))
    classes = timed("classification", lambda: classify_eval(model, tokenizer, scenes(cfg.classify_images, 2, 1), cfg, size))
    metrics = with_interval(f"{prefix}caption_accuracy", caption["accuracy"], caption["ci95"], cfg.caption_images)
    metrics[f"{prefix}caption_accuracy_chance"] = caption["chance"]
    metrics.update(with_interval(f"{prefix}t2i_accuracy", t2i["accuracy"], t2i["ci95"], cfg.t2i_prompts))
    metrics[f"{prefix}t2i_accuracy_chance"] = t2i["chance"]
    metrics[f"{prefix}analyser_accuracy_renders"] = t2i["analyser_accuracy_renders"]
    metrics[f"{prefix}analyser_accuracy_vq"] = t2i["analyser_accuracy_vq"]
    for direction in ("image_given_label", "label_given_image"):
        tasks = [classes[f"{key}/{direction}"] for key in ("shape", "color")]
        metrics[f"{prefix}classify_accuracy_{direction}"] = sum(t["top1"] for t in tasks) / len(tasks)
        metrics[f"{prefix}classify_accuracy_{direction}_chance"] = sum(t["chance"] for t in tasks) / len(tasks)
        for key, task in zip(("shape", "color"), tasks):
            name = f"{prefix}classify_{key}_accuracy_{direction}"
            metrics.update(with_interval(name, task["top1"], task["ci95"], cfg.classify_images))
            metrics[f"{name}_chance"] = task["chance"]
    return metrics, {"caption": caption, "t2i": t2i, "classes": classes}


def sampled_images(tokenizer, outputs: list[list[int]], image_size: int) -> list[Image.Image]:
    """The image each sample opens with (its first h·w codes), decoded at the world's size."""
    vocab = tokenizer.vocab
    hw = vocab.grid[0] * vocab.grid[1]
    grids = [vocab.id_to_code(torch.tensor(o[:hw])).view(vocab.grid) for o in outputs]
    return _at_size(tokenizer.decode_images(grids), image_size)


def caption_eval(model, tokenizer, scenes: list[dict], cfg: EvalConfig, image_size: int) -> dict:
    """Greedy captions of rendered scenes; accuracy = share of true attributes the caption states."""
    images = [render_scene(s, image_size) for s in scenes]
    captions = caption_images(model, tokenizer, images, prompt=cfg.caption_prompt, lead=cfg.caption_lead,
                              max_tokens=cfg.caption_max_tokens, seed=cfg.seed)  # fmt: skip
    stated = [caption_scene(c) for c in captions]
    accuracy, ci95 = attribute_accuracy_with_interval(scenes, stated, seed=cfg.seed)
    return {
        "accuracy": accuracy,
        "ci95": ci95,
        "chance": permutation_chance(scenes, stated, seed=cfg.seed),
        "items": [{"image": im, "truth": describe_scene(s), "caption": c} for im, s, c in zip(images, scenes, captions)],
    }


def t2i_eval(model, tokenizer, scenes: list[dict], cfg: EvalConfig, image_size: int) -> dict:
    """One image per held-out caption; accuracy = share of prompt attributes the analyser finds in it."""
    vocab = tokenizer.vocab
    texts = [cfg.t2i_template.format(caption=describe_scene(s)) for s in scenes]
    prompts = [tokenizer.encode_parts([t], eos=False) + [vocab.boi] for t in texts]
    params = SamplingParams(max_new_tokens=vocab.image_tokens - 1, temperature=cfg.t2i_temperature, top_k=cfg.t2i_top_k,
                            cfg_scale=cfg.t2i_cfg_scale, max_images=1, seed=cfg.seed, eos_stops=False,
                            jacobi_window=cfg.t2i_jacobi_window)
    with progress_bar(desc="text-to-image", unit="step") as bar:
        outs = sample(model, vocab, prompts, params, progress=sampler_progress(bar))
    images = sampled_images(tokenizer, outs, image_size)
    read = [analyse_scene(im) for im in images]
    # the analyser on VQ round trips of the true renders: the best a perfect generator could score
    truth_images = [render_scene(s, image_size) for s in scenes]
    round_trip = _at_size(tokenizer.decode_images(tokenizer.image_tok.encode(truth_images)), image_size)
    accuracy, ci95 = attribute_accuracy_with_interval(scenes, read, seed=cfg.seed)
    return {
        "accuracy": accuracy,
        "ci95": ci95,
        "chance": permutation_chance(scenes, read, seed=cfg.seed),
        "analyser_accuracy_renders": attribute_accuracy(scenes, [analyse_scene(im) for im in truth_images]),
        "analyser_accuracy_vq": attribute_accuracy(scenes, [analyse_scene(im) for im in round_trip]),
        "items": [{"prompt": t, "image": im, "truth_image": ti, "read": describe_scene(r) if r["shapes"] else "(nothing)"}
                  for t, im, ti, r in zip(texts, images, truth_images, read)],
    }


def _at_size(images: list[Image.Image], size: int) -> list[Image.Image]:
    """The analyser reads the world's geometry, so VQ outputs of another size are scaled back to it."""
    return [im if im.size == (size, size) else im.resize((size, size), Image.Resampling.NEAREST) for im in images]


def _with(scene: dict, key: str, value: str) -> dict:
    return {"background": scene["background"], "shapes": [{**scene["shapes"][0], key: value}]}


def classify_eval(model, tokenizer, scenes: list[dict], cfg: EvalConfig, image_size: int, *,
                  reuse_prefix: bool = True) -> dict:
    """Shape and colour of single-shape scenes, by likelihood in both directions.

    The candidates for a scene are its caption with the label put in place of
    the true attribute, so every label is scored in a sentence the model saw
    the like of in training.
    """
    vocab = tokenizer.vocab
    grids = tokenizer.image_tok.encode([render_scene(s, image_size) for s in scenes])
    lead = tokenizer.encode_parts([cfg.classify_lead], eos=False)
    results = {}
    for key, labels in (("shape", SHAPES), ("color", tuple(COLORS))):
        captions = [[describe_scene(_with(s, key, label)) for label in labels] for s in scenes]
        truth = [labels.index(s["shapes"][0][key]) for s in scenes]
        prompts = [[tokenizer.encode_parts([cfg.classify_prompt.format(caption=c)], eos=False) for c in cs]
                   for cs in captions]
        follows = [[tokenizer.encode_text(cfg.classify_follow.format(caption=c)) for c in cs] for cs in captions]
        both = classify_both_ways(model, vocab, grids, truth, labels, prompts=prompts, lead=lead, follows=follows,
                                  batch_size=cfg.batch_size, calibrate=cfg.calibrate, seed=cfg.seed,
                                  reuse_prefix=reuse_prefix)  # fmt: skip
        results |= {f"{key}/{direction}": metrics for direction, metrics in both.items()}
    return results
