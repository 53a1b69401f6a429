"""The figures of DataComp's experiment on the noisy shapes world (benchmarks/curation_ablation.py).

Two models trained on the same number of tokens, one on the raw noisy corpus and one on its curated copy, are
scored on the clean held-out scenes: the report's accuracies (``shapes_accuracies``) over all scenes, and on
one-shape scenes of the most and the least common training concepts (``world_noise.concept_groups``), which is
where concept balancing should show. Recaptioning (CapFilt) is scored from the curation record's ground truth:
of the images the CLIP filter removed, the share whose new caption the filter accepts and the world's caption
parser finds right.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from mmgen.config import ExperimentConfig
from mmgen.data.token_shards import TokenShards
from mmgen.eval.intervals import wilson_interval
from mmgen.eval.likelihood import bits_per_token
from mmgen.eval.report import interval_text
from mmgen.eval.shapes_eval import shapes_accuracies

TASKS = (
    ("caption_accuracy", "caption"),
    ("t2i_accuracy", "text-to-image"),
    ("classify_shape_accuracy_image_given_label", "shape by p(image given label)"),
    ("classify_color_accuracy_image_given_label", "colour by p(image given label)"),
    ("classify_shape_accuracy_label_given_image", "shape by p(label given image)"),
    ("classify_color_accuracy_label_given_image", "colour by p(label given image)"),
)
"""The accuracies compared, with the tables' names for them."""


@torch.inference_mode()
def arm_metrics(cfg: ExperimentConfig, model, tokenizer, heldout_tokens: str, groups: dict[str, Sequence[str]]) -> dict:
    """Held-out bits per token, the accuracies on all ``cfg.eval.split`` scenes, and per concept group
    (prefixed ``<group>_``) on one-shape scenes of its concepts."""
    e = cfg.eval
    shards = TokenShards(heldout_tokens)
    count = len(shards) if e.heldout_documents <= 0 else min(e.heldout_documents, len(shards))
    metrics = bits_per_token(model, (shards[i] for i in range(count)), image_range=tokenizer.vocab.image_range,
                             pad_id=tokenizer.vocab.pad, max_len=cfg.model.max_seq_len, batch_size=e.batch_size)  # fmt: skip
    metrics.update(shapes_accuracies(model, tokenizer, e, cfg.world)[0])
    for group, concepts in groups.items():
        metrics.update(shapes_accuracies(model, tokenizer, e, cfg.world, concepts=concepts, prefix=f"{group}_")[0])
    return metrics


def recaption_figures(ground_truth: dict[str, dict[str, int]]) -> dict[str, dict[str, Any]]:
    """Per injected kind, and over them all ('all'): images the CLIP filter removed, and of them those whose new
    caption is right, is accepted by the filter, is accepted and right, with shares of the removed (Wilson 95 %)."""
    rows = dict(ground_truth)
    total: dict[str, int] = {}
    for counts in rows.values():
        for key, n in counts.items():
            total[key] = total.get(key, 0) + n
    out = {}
    for kind, counts in {**rows, "all": total}.items():
        removed = counts.get("scored", 0) - counts.get("kept_by_clip", 0)
        figures: dict[str, Any] = {"removed": removed}
        for key in ("recaption_correct", "recaptioned", "recaptioned_correct"):
            n = counts.get(key, 0)
            figures[key] = n
            figures[f"{key}_share"] = n / removed if removed else float("nan")
            figures[f"{key}_ci95"] = [round(x, 4) for x in wilson_interval(n, removed)]
        wrong = figures["recaptioned"] - figures["recaptioned_correct"]
        figures["recaptioned_wrong"] = wrong
        figures["recaptioned_wrong_share"] = wrong / removed if removed else float("nan")
        out[kind] = figures
    return out


def _share(figures: dict, key: str) -> str:
    lo, hi = figures[f"{key}_ci95"]
    return f"{figures[key]:,} ({figures[f'{key}_share']:.1%} [{lo:.1%}, {hi:.1%}])"


def _beats(a: dict, b: dict, key: str) -> str:
    """'yes' when ``b``'s interval lies wholly above ``a``'s, 'no (worse)' when wholly below, else 'within'."""
    (alo, ahi), (blo, bhi) = a[f"{key}_ci95"], b[f"{key}_ci95"]
    return "yes" if blo > ahi else "no (worse)" if bhi < alo else "within the intervals"


def comparisons(arms: Sequence[str]) -> list[tuple[str, str]]:
    """(arm, the arm it is compared with): each curated arm with the raw one, and the curated arm with the
    filter-only one, which differ by concept balancing alone."""
    pairs = [(name, "raw") for name in arms if name != "raw" and "raw" in arms]
    return pairs + ([("curated", "filtered")] if {"curated", "filtered"} <= set(arms) else [])


def markdown_tables(result: dict) -> str:
    """The benchmark's tables in markdown: the arms' corpora, their accuracies overall and per concept group
    with each comparison of ``comparisons``, the thresholds chosen on the ground truth, and recaptioning."""
    arms = result["arms"]
    versus = comparisons(list(arms))
    lines = [f"Training tokens per arm: {result['training_tokens_each']:,}; held-out {result['split']} scenes.", "",
             "| arm | documents | caption pairs | training tokens in the corpus (drawn per pass) | passes over it |", "|---|---|---|---|---|"]
    for name, arm in arms.items():
        c = arm["corpus"]
        lines.append(f"| {name} | {c['documents']:,} | {c['caption_pairs']:,} | {c['tokens']:,} | "
                     f"{result['training_tokens_each'] / max(c['tokens'], 1):.2f} |")
    lines += ["", "| accuracy (value [95 % interval], items) | " + " | ".join(arms) + " | "
              + " | ".join(f"{a} above {b}'s interval" for a, b in versus) + " |",
              "|---|" + "---|" * (len(arms) + len(versus))]  # fmt: skip
    for group in ("", *result["groups"]):
        label = f"{group} concepts: " if group else ""
        for key, name in TASKS:
            k = f"{group}_{key}" if group else key
            cells = [interval_text(arm["metrics"], k) for arm in arms.values()]
            cells += [_beats(arms[b]["metrics"], arms[a]["metrics"], k) for a, b in versus]
            lines.append(f"| {label}{name} | " + " | ".join(cells) + " |")
    for key in ("text_bits_per_token", "image_bits_per_token"):
        lines.append(f"| held-out {key.replace('_', ' ')} (lower is better) | "
                     + " | ".join(f"{arm['metrics'][key]:.4f}" for arm in arms.values()) + " |" + " |" * len(versus))
    groups = "; ".join(f"{g}: {', '.join(c)}" for g, c in result["groups"].items())
    lines += ["", f"Concept groups (one-shape scenes of these concepts only): {groups}."]
    lines += _threshold_tables(result.get("thresholds", {}))
    if result.get("recaption"):
        lines += ["", "| removed by the CLIP filter | images | new caption right | accepted by the filter | "
                  "accepted and right | accepted but wrong |", "|---|---|---|---|---|---|"]
        for kind, f in result["recaption"].items():
            lines.append(f"| {kind} | {f['removed']:,} | {_share(f, 'recaption_correct')} | {_share(f, 'recaptioned')} | "
                         f"{_share(f, 'recaptioned_correct')} | {f['recaptioned_wrong']:,} "
                         f"({f['recaptioned_wrong_share']:.1%}) |")
    return "\n".join(lines) + "\n"


def _interval(row: dict, key: str) -> str:
    """'12.2% [10.4%, 14.1%]', or '–' for a share of nothing."""
    lo, hi = row[f"{key}_ci95"]
    return "–" if row[key] != row[key] else f"{row[key]:.1%} [{lo:.1%}, {hi:.1%}]"


def _shown(sweep: dict, every: float = 0.05) -> list[dict]:
    """The rows a table shows: every ``every`` of the sweep, the threshold used and the one chosen."""
    marks = {round(sweep["chosen"]["threshold"], 4), round(float(sweep.get("used", -9)), 4)}
    return [r for r in sweep["rows"] if r["threshold"] in marks or abs(r["threshold"] / every - round(r["threshold"] / every)) < 1e-6]


def _threshold_tables(thresholds: dict) -> list[str]:
    """The document-image and generated-caption threshold sweeps (``mmgen.eval.curation_thresholds``)."""
    lines: list[str] = []
    if "documents" in thresholds:
        d = thresholds["documents"]
        lines += ["", f"Document images of the training split ({d['good']:,} clean, {d['bad']:,} misaligned or "
                  f"uninformative); chosen: {d['chosen']['threshold']:.2f} (the best sum of the two shares, Youden's J).", "",
                  "| threshold | clean kept | corrupted removed | J |", "|---|---|---|---|"]  # fmt: skip
        for r in _shown(d):
            lines.append(f"| {r['threshold']:.2f} | {_interval(r, 'good_kept_share')} | "
                         f"{_interval(r, 'bad_removed_share')} | {r['youden']:.3f} |")
    if "recaption" in thresholds:
        c = thresholds["recaption"]
        lines += ["", f"Generated captions of the {c['removed']:,} removed training pairs ({c['right']:,} right); "
                  f"chosen: {c['chosen']['threshold']:.2f} (the best F1 of right captions).", "",
                  "| threshold | accepted (of removed) | accepted and right (of removed) | right among accepted | "
                  "right kept | wrong removed | F1 |", "|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in _shown(c):
            lines.append(f"| {r['threshold']:.2f} | {r['accepted']:,} ({_interval(r, 'accepted_share')}) | "
                         f"{r['accepted_right']:,} ({_interval(r, 'accepted_right_share')}) | {_interval(r, 'precision')} | "
                         f"{_interval(r, 'good_kept_share')} | {_interval(r, 'bad_removed_share')} | {r['f1']:.3f} |")
    return lines
