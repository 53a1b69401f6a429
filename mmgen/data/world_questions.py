"""Question-answer text in the shapes world's training documents (an option of the generator, off by default,
on in the demo).

Pretraining on the plain world never asks a question: the SFT stage alone taught visual QA, from about 700
examples, and a model that captioned 99 % of held-out scenes right answered 0.41 of their questions
(docs/BENCHMARKS.md, run L). With ``world.qa_share`` the generator follows a share of the training documents'
images with questions about them and their answers, in the SFT VQA task's own words: the questions and
answers come from ``mmgen.data.sft_tasks.vqa_questions`` on the image's ground truth, asked with its
short-answer instruction (``vqa_prompt``).

Where the questions go, and why there:

- Only around an image no text has described yet (a fresh scene shown before its caption): its answers can
  only be read from the image. The caption comes after the answers. Images described before they appear
  ("Draw a ...") and narrated edits get no questions: their answers could be copied from the text.
- The first question comes right before the image (``world.qa_question_first``), the SFT prompt's order:
  question, image, answer. Its answer then opens the text after the image, written as an SFT answer is
  (``answer_text``: with its in-sentence space, so as the pieces a caption names it with), which gives the
  very tokens of an SFT answer. Further questions (``world.qa_per_image``) follow the answer, about the same
  image, so they share its tokens.
- Not in the caption pairs: their captions are SFT's captioning targets and the retrieval encoder's texts,
  and half of the pairs put the caption before the image.
- Training split only, like the world's noise: held-out documents stay as they were, so held-out bits per
  token and infilling stay comparable between runs. Held-out and validation scenes never reach training
  documents, with or without questions (``scene_split``).
- From its own random stream: with the option on, the documents hold the same scenes and sentences as
  without it, plus the questions.
- No answer can be read from the other questions about the same image: a question that names an answer given
  before it ("What shape is the red object?" after "What color is the circle? red."), or whose answer an earlier
  question names, is not asked.
- An answer ends its sentence with a full stop, so sentence-level tools (the world's noise) keep it whole; the
  noise corrupts captions, never answers.

Ground truth: the metadata of an image with questions carries ``qa``, one record per question (its kind,
question, answer, and whether it was asked before or after the image).
"""

from __future__ import annotations

import re

import numpy as np

from mmgen.config.schema import WorldConfig
from mmgen.data.sft_tasks import answer_text, vqa_prompt, vqa_questions
from mmgen.data.shapes_world import Scene, split_rng


def _names(text: str, answer: str) -> bool:
    return re.search(rf"\b{re.escape(answer)}\b", text) is not None


def independent_questions(pool: list[tuple[str, str, str]], order: np.ndarray, limit: int) -> list[tuple[str, str, str]]:
    """Up to ``limit`` (kind, question, answer) of ``pool``, taken in ``order``, none of whose answers another one's
    question names."""
    chosen: list[tuple[str, str, str]] = []
    for i in order:
        _, question, answer = pool[int(i)]
        if not any(_names(question, a) or _names(q, answer) for _, q, a in chosen):
            chosen.append(pool[int(i)])
        if len(chosen) == limit:
            break
    return chosen


class WorldQuestions:
    """The questions of one split's documents; inactive outside the training split or with ``qa_share`` 0."""

    def __init__(self, cfg: WorldConfig, split: str):
        self.cfg = cfg
        self.split = split
        self.active = split == "train" and cfg.qa_share > 0
        self.rng: np.random.Generator = split_rng(cfg.seed, split, "questions")
        self.images = self.questions = 0

    def ask(self, scene: Scene) -> tuple[list[str], Scene, list[str]]:
        """(texts right before the image, the image's metadata, texts right after it): ``scene`` unchanged and
        no texts when this image gets no questions."""
        if not self.active or self.rng.random() >= self.cfg.qa_share:
            return [], scene, []
        pool = vqa_questions(scene)
        picked = independent_questions(pool, self.rng.permutation(len(pool)), self.cfg.qa_per_image)
        first_before = bool(self.rng.random() < self.cfg.qa_question_first)
        before: list[str] = []
        after: list[str] = []
        records = []
        for n, (kind, question, answer) in enumerate(picked):
            asked_before = n == 0 and first_before
            if asked_before:
                before.append(vqa_prompt(question))
                after.append(f"{answer_text(answer)}.")
            else:
                after.append(f"{vqa_prompt(question)}{answer_text(answer)}.")
            records.append({"kind": kind, "question": question, "answer": answer,
                            "asked": "before_image" if asked_before else "after_image"})  # fmt: skip
        self.images += 1
        self.questions += len(records)
        return before, {**scene, "qa": records}, after

    def summary(self) -> dict[str, int]:
        """Images with questions and questions asked, keyed like the generator's counts; empty when inactive."""
        if not self.active:
            return {}
        return {f"{self.split}_qa_images": self.images, f"{self.split}_qa_questions": self.questions}
