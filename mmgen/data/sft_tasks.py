"""Supervised fine-tuning tasks built from image–caption pairs (CM3leon's second stage).

Every example is ``instruction``, an ``input`` and an ``output``; the token
stream is ``BOS task instruction SEP input SEP output EOS`` and the loss covers
the output (and EOS) only. Tasks:

- ``caption``: image in, caption out;
- ``t2i``: caption in, image out (with condition dropout for classifier-free
  guidance: the caption is emptied with a configured probability, so the model
  also learns p(image));
- ``vqa``: image plus a question generated from the scene's ground truth in,
  a one-word answer out (written as within a sentence, ``answer_text``), with LLaVA-1.5's short-answer
  prompt.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np
from PIL import Image

from mmgen.data.shapes_world import BACKGROUNDS, COLORS, POSITIONS, SHAPES, SIZES

SHORT_ANSWER = "Answer with a single word or phrase."
COUNT_WORDS = ("zero", "one", "two", "three", "four", "five")
TASKS = ("caption", "t2i", "vqa")

Content = Union[str, Image.Image]


@dataclass
class SFTExample:
    task: str
    instruction: str
    input: Content
    output: Content
    metadata: dict[str, Any] = field(default_factory=dict)
    """Ground truth for scoring: the scene, the question kind and its answer."""


def vqa_prompt(question: str) -> str:
    """A question as the VQA task asks it: the question, then the short-answer instruction."""
    return f"{question} {SHORT_ANSWER}"


def answer_text(answer: str) -> str:
    """An answer as the model writes it: with the space the word has inside a sentence. The text tokenizer adds
    no dummy prefix, so a bare "purple" or "top left" would be fragments (p-ur-ple, t-o-p) that pretraining
    never shows, while " purple" is the very piece of every caption that names the colour."""
    return f" {answer}"


def vqa_questions(scene: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(question kind, question, answer) pairs answerable from the scene alone (unambiguous references only)."""
    shapes = scene["shapes"]
    by_shape = Counter(s["shape"] for s in shapes)
    by_color = Counter(s["color"] for s in shapes)
    out = [
        ("count", "How many shapes are there?", COUNT_WORDS[len(shapes)]),
        ("background", "What color is the background?", scene["background"]),
    ]
    for s in shapes:
        if by_shape[s["shape"]] == 1:
            out.append(("color", f"What color is the {s['shape']}?", s["color"]))
        if by_color[s["color"]] == 1:
            out.append(("shape", f"What shape is the {s['color']} object?", s["shape"]))
        if by_shape[s["shape"]] == 1 and by_color[s["color"]] == 1:
            out.append(("position", f"Where is the {s['color']} {s['shape']}?", s["position"]))
            out.append(("size", f"Is the {s['color']} {s['shape']} small or large?", s["size"]))
    return out


ANSWER_CHOICES = {
    "count": COUNT_WORDS[1:4],
    "background": tuple(BACKGROUNDS),
    "color": tuple(COLORS),
    "shape": SHAPES,
    "position": POSITIONS,
    "size": SIZES,
}
"""Possible answers of each question kind; chance accuracy is one over their number."""


def caption_example(image: Image.Image, caption: str, metadata: dict[str, Any]) -> SFTExample:
    return SFTExample("caption", "Describe the image.", image, caption, {"scene": metadata})


def t2i_example(image: Image.Image, caption: str, metadata: dict[str, Any], *, drop_condition: bool = False) -> SFTExample:
    return SFTExample("t2i", "Draw the image.", "" if drop_condition else caption, image,
                      {"scene": metadata, "condition_dropped": drop_condition})


def vqa_example(image: Image.Image, scene: dict[str, Any], rng: np.random.Generator) -> SFTExample | None:
    questions = vqa_questions(scene)
    if not questions:
        return None
    kind, question, answer = questions[int(rng.integers(len(questions)))]
    return SFTExample("vqa", vqa_prompt(question), image, answer_text(answer), {"scene": scene, "kind": kind, "answer": answer})


def task_examples(
    pairs: list[tuple[Image.Image, str, dict[str, Any]]],
    weights: dict[str, float],
    *,
    condition_dropout: float,
    seed: int,
) -> list[SFTExample]:
    """A seeded mixture: ``weights[task]`` examples per pair for each task (fractions sample a share of the pairs)."""
    rng = np.random.default_rng(seed)
    examples: list[SFTExample] = []
    for task, weight in weights.items():
        if task not in TASKS:
            raise ValueError(f"unknown SFT task {task!r} (choose from {', '.join(TASKS)})")
        whole, fraction = int(weight), weight - int(weight)
        for image, caption, scene in pairs:
            for _ in range(whole + int(rng.random() < fraction)):
                if task == "caption":
                    examples.append(caption_example(image, caption, scene))
                elif task == "t2i":
                    examples.append(t2i_example(image, caption, scene, drop_condition=bool(rng.random() < condition_dropout)))
                elif (example := vqa_example(image, scene, rng)) is not None:
                    examples.append(example)
    order = rng.permutation(len(examples))
    return [examples[i] for i in order]
