"""The demo summary: what each stage of a run achieved and how long it took.

Reads only files the stages wrote (the pretraining loss log, the image
tokenizer's metrics, the per-stage timing files, the samples), so it can be
rebuilt for any finished run.
"""

from __future__ import annotations

import json
import posixpath
from typing import Any

import fsspec

from mmgen.config import RunPaths
from mmgen.device import machine_description
from mmgen.files import read_jsonl

STAGES = ("world", "train_text", "train_image", "encode", "pretrain", "sample")
OPTIONAL_STAGES = ("report", "encode_sft", "sft", "sft_lora", "compare_sft")


def read_json(path: str) -> Any:
    """A JSON file a stage wrote; a missing one is a user error naming it."""
    fs, local = fsspec.core.url_to_fs(path)
    if not fs.exists(local):
        raise FileNotFoundError(f"missing input {path}")
    with fs.open(local, "r") as f:
        return json.load(f)


def _loss_log(path: str) -> list[dict[str, Any]]:
    fs, local = fsspec.core.url_to_fs(path)
    if not fs.exists(local):
        raise FileNotFoundError(f"missing input {path} (run train/pretrain.py first)")
    records = read_jsonl(path)
    if not records:
        raise FileNotFoundError(f"{path} holds no logged steps")
    # a resumed run appends; keep the newest record of each step
    return sorted({r["step"]: r for r in records}.values(), key=lambda r: r["step"])


def demo_summary(paths: RunPaths) -> dict[str, Any]:
    log = _loss_log(paths.loss_log)
    first, last = log[0], log[-1]
    vq = read_json(paths.image_tokenizer_metrics)
    seconds = {stage: round(read_json(paths.stage_timing(stage))["seconds"], 2) for stage in STAGES}
    for stage in OPTIONAL_STAGES:
        fs, local = fsspec.core.url_to_fs(paths.stage_timing(stage))
        if fs.exists(local):
            seconds[stage] = round(read_json(paths.stage_timing(stage))["seconds"], 2)
    fs, samples = fsspec.core.url_to_fs(paths.samples_dir)
    sample_files = sorted(posixpath.basename(p) for p in fs.ls(samples, detail=False)) if fs.exists(samples) else []
    return {
        "text_loss_first": first["text_loss"],
        "text_loss_last": last["text_loss"],
        "image_loss_first": first["image_loss"],
        "image_loss_last": last["image_loss"],
        "first_logged_step": first["step"],
        "last_logged_step": last["step"],
        "vq_psnr": vq["psnr"],
        "vq_codebook_usage": vq.get("codebook_usage"),
        "stage_seconds": seconds,
        "total_seconds": round(sum(seconds.values()), 2),
        "samples": sample_files,
        "machine": machine_description(),
        "headline": _headline(paths),
    }


_HEADLINE = ("caption_accuracy", "t2i_accuracy", "classify_shape_accuracy_image_given_label",
             "classify_shape_accuracy_label_given_image", "classify_color_accuracy_image_given_label",
             "classify_color_accuracy_label_given_image", "infill_image_accuracy", "infill_text_exact",
             "infill_text_exact_left_context", "vqa_accuracy")  # fmt: skip


def _headline(paths: RunPaths) -> dict[str, dict[str, Any]]:
    """Accuracies with their 95 % intervals and items: the report's (pretrained model, report prompts) and the
    SFT comparison's (each checkpoint on the held-out SFT prompts), kept apart since the prompts differ."""
    runs: dict[str, dict[str, Any]] = {}
    for prefix, path in (("report", paths.report_metrics), ("sft comparison", paths.sft_metrics)):
        fs, local = fsspec.core.url_to_fs(path)
        if not fs.exists(local):
            continue
        found = read_json(path)
        for run, metrics in ({"pretrained": found} if prefix == "report" else found).items():
            runs[f"{prefix}: {run}"] = {k: [round(metrics[k], 4), metrics.get(f"{k}_ci95"), metrics.get(f"{k}_items")]
                                        for k in _HEADLINE if k in metrics}
    return runs
