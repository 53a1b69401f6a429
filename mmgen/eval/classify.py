"""Generative classification: score every candidate label by likelihood, in both directions.

- image | label: log p(image codes | label prompt). All label prompts of all
  images share their longest common token prefix, which runs once; each row
  continues with the rest of its prompt, BOI, the codes and EOI, and only the
  codes are scored. ``calibrate`` subtracts log p(codes | BOS BOI), the image's
  unconditional likelihood (a constant per image: it leaves the ranking of
  labels alone but makes scores comparable across images).
- label | image: log p(label text | lead, image). The lead, the image and the
  label texts' common prefix run once per image (all images' prefixes in one
  batch); the label continuations of all images are batched. ``calibrate``
  subtracts log p(label text | lead) without the image, removing the label
  prior (PMI scoring).

Inputs are token ids, so any tokenizer and template fit; ``label_texts`` may
differ per image (e.g. a caption with the label put into the image's other
attributes). ``classification_metrics`` gives top-1/top-5 accuracy, per-class
accuracy and the confusion matrix; ``confusion_png`` draws it with PIL.
"""

from __future__ import annotations

import io
import json
import posixpath
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from mmgen.files import write_atomic

from mmgen.eval.attributes import label_chance
from mmgen.eval.intervals import wilson_interval
from mmgen.eval.likelihood import common_prefix_length, continuation_logprobs, grouped_continuation_logprobs

TokenIds = Sequence[int]


def _codes(vocab, grid: torch.Tensor) -> list[int]:
    return vocab.code_to_id(torch.as_tensor(grid).flatten()).tolist()


def image_given_label_scores(
    model,
    vocab,
    grids: Sequence[torch.Tensor],
    prompts: Sequence[Sequence[TokenIds]],
    *,
    batch_size: int = 32,
    reuse_prefix: bool = True,
    calibrate: bool = False,
) -> torch.Tensor:
    """[M, N] log p(codes of image m | prompts[m][n]); prompts start with BOS."""
    flat = [list(p) for per_image in prompts for p in per_image]
    n_labels = len(prompts[0])
    cut = common_prefix_length(flat)
    continuations, spans = [], []
    for m, per_image in enumerate(prompts):
        codes = _codes(vocab, grids[m])
        for p in per_image:
            rest = list(p)[cut:] + [vocab.boi]
            spans.append((len(rest), len(rest) + len(codes)))
            continuations.append(rest + codes + [vocab.eoi])
    logp = continuation_logprobs(model, flat[0][:cut], continuations, pad_id=vocab.pad, batch_size=batch_size,
                                 reuse_prefix=reuse_prefix, desc="image | label")
    scores = torch.tensor([float(lp[a:b].sum()) for lp, (a, b) in zip(logp, spans)]).view(len(prompts), n_labels)
    if calibrate:
        unconditional = continuation_logprobs(
            model, [vocab.bos, vocab.boi], [_codes(vocab, g) for g in grids], pad_id=vocab.pad,
            batch_size=batch_size, reuse_prefix=reuse_prefix, desc="image alone (calibration)",
        )
        scores = scores - torch.tensor([float(lp.sum()) for lp in unconditional])[:, None]
    return scores


def label_given_image_scores(
    model,
    vocab,
    grids: Sequence[torch.Tensor],
    lead: TokenIds,
    label_texts: Sequence[Sequence[TokenIds]],
    *,
    batch_size: int = 32,
    reuse_prefix: bool = True,
    calibrate: bool = False,
) -> torch.Tensor:
    """[M, N] log p(label_texts[m][n] | lead, BOI codes EOI); ``lead`` starts with BOS."""
    groups, priors = [], []
    for m, texts in enumerate(label_texts):
        texts = [list(t) for t in texts]
        cut = common_prefix_length(texts)
        image = [vocab.boi, *_codes(vocab, grids[m]), vocab.eoi]
        rests = [t[cut:] for t in texts]
        groups.append(([*lead, *image, *texts[0][:cut]], rests))
        priors.append(([*lead, *texts[0][:cut]], rests))
    kwargs = dict(pad_id=vocab.pad, batch_size=batch_size, reuse_prefix=reuse_prefix)

    def totals(groups_, desc: str) -> torch.Tensor:
        logp = grouped_continuation_logprobs(model, groups_, desc=desc, **kwargs)
        return torch.tensor([[float(lp.sum()) for lp in group] for group in logp])

    scores = totals(groups, "label | image")
    return scores - totals(priors, "label alone (calibration)") if calibrate else scores


def classification_metrics(scores: torch.Tensor, truth: Sequence[int], labels: Sequence[str]) -> dict:
    """Top-1/top-5 accuracy, per-class accuracy and confusion matrix (rows: truth, columns: prediction)."""
    truth_t = torch.as_tensor(list(truth))
    ranked = scores.argsort(dim=1, descending=True)
    top1 = ranked[:, 0]
    top5 = (ranked[:, : min(5, scores.shape[1])] == truth_t[:, None]).any(dim=1)
    confusion = np.zeros((len(labels), len(labels)), dtype=np.int64)
    for t, p in zip(truth_t.tolist(), top1.tolist()):
        confusion[t, p] += 1
    per_class = {
        label: (float(confusion[i, i] / confusion[i].sum()) if confusion[i].sum() else None)
        for i, label in enumerate(labels)
    }
    correct = int((top1 == truth_t).sum())
    return {
        "top1": correct / max(1, len(truth_t)),
        "ci95": wilson_interval(correct, len(truth_t)),
        "top5": float(top5.float().mean()),
        "per_class": per_class,
        "confusion": confusion.tolist(),
        "predictions": [labels[i] for i in top1.tolist()],
    }


def classify_both_ways(model, vocab, grids, truth: Sequence[int], labels: Sequence[str], *,
                       prompts: Sequence[Sequence[TokenIds]], lead: TokenIds, follows: Sequence[Sequence[TokenIds]],
                       batch_size: int, calibrate: bool, seed: int, reuse_prefix: bool = True) -> dict[str, dict]:  # fmt: skip
    """Every image classified among ``labels`` by log p(image | its label ``prompts``) and by
    log p(its label ``follows`` | ``lead``, image): per direction, ``classification_metrics`` with the chance
    level of the same predictions (``label_chance``, seeded by ``seed``) and the labels."""
    kwargs = dict(batch_size=batch_size, reuse_prefix=reuse_prefix, calibrate=calibrate)
    scores = {
        "image_given_label": image_given_label_scores(model, vocab, grids, prompts, **kwargs),
        "label_given_image": label_given_image_scores(model, vocab, grids, lead, follows, **kwargs),
    }
    results = {}
    for direction, s in scores.items():
        metrics = classification_metrics(s, truth, list(labels))
        metrics["chance"] = label_chance([labels[t] for t in truth], metrics["predictions"], seed=seed)
        metrics["labels"] = list(labels)
        results[direction] = metrics
    return results


def write_classification(out_dir: str, tasks: dict[str, dict], summary: dict, *,
                         skipped: list[str] | None = None) -> list[str]:  # fmt: skip
    """``results.json`` (``summary`` with the ``tasks``, and the ``skipped`` inputs among them when given) and a
    confusion-matrix PNG per task under ``out_dir``; returns one line per task for the console."""
    lines = []
    for name, task in tasks.items():
        write_atomic(posixpath.join(out_dir, name.replace("/", "-") + "-confusion.png"),
                     confusion_png(task["confusion"], task["labels"]))
        lo, hi = task["ci95"]
        lines.append(f"{name}: top-1 {task['top1']:.3f} [95 % interval {lo:.3f}, {hi:.3f}; "
                     f"{len(task['predictions'])} images] (chance {task['chance']:.3f}), top-5 {task['top5']:.3f}, "
                     f"per class {json.dumps(task['per_class'])}")
    listed = tasks if skipped is None else {**tasks, "skipped": skipped}
    write_atomic(posixpath.join(out_dir, "results.json"), json.dumps({**summary, "tasks": listed}, indent=1))
    return lines


def confusion_png(confusion: Sequence[Sequence[int]], labels: Sequence[str], *, cell: int = 36) -> bytes:
    """A confusion-matrix heat map (rows: truth, columns: prediction) as PNG bytes."""
    matrix = np.asarray(confusion, dtype=np.float64)
    n = len(labels)
    margin = 8 + 7 * max((len(label) for label in labels), default=1)
    image = Image.new("RGB", (margin + n * cell + 4, margin + n * cell + 4), "white")
    draw = ImageDraw.Draw(image)
    rows = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, rows, out=np.zeros_like(matrix), where=rows > 0)
    for i in range(n):
        draw.text((4, margin + i * cell + cell // 3), labels[i], fill="black")
        draw.text((margin + i * cell + 2, 4), labels[i][: cell // 7], fill="black")
        for j in range(n):
            shade = int(255 * (1 - share[i, j]))
            box = (margin + j * cell, margin + i * cell, margin + (j + 1) * cell - 1, margin + (i + 1) * cell - 1)
            draw.rectangle(box, fill=(shade, shade, 255), outline="gray")
            draw.text((box[0] + 4, box[1] + cell // 3), str(int(matrix[i, j])), fill="black" if shade > 120 else "white")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
