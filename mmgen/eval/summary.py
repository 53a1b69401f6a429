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
from mmgen.files import exists, read_jsonl
from mmgen.model.checkpoint import checkpoint_steps

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


def demo_summary(paths: RunPaths, *, checkpoint_folder: str = "checkpoint") -> dict[str, Any]:
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
        "outputs": _outputs(paths, checkpoint_folder, sft_folders=[s for s in seconds if s.startswith("sft")]),
        "machine": machine_description(),
        "headline": _headline(paths),
    }


def _outputs(paths: RunPaths, checkpoint_folder: str, sft_folders: list[str]) -> dict[str, Any]:
    """Where a user finds what the run produced: report, samples, newest checkpoints, curves (existing ones only)."""
    found: dict[str, Any] = {"run": paths.root}
    for name, path in (("report", posixpath.join(paths.root, "eval", "report.html")),
                       ("samples", posixpath.join(paths.samples_dir, "index.html")),
                       ("tensorboard", posixpath.join(paths.pretrain_dir, "tb"))):  # fmt: skip
        if exists(path):
            found[name] = path
    checkpoints = {}
    for name, folder in (("pretrain", paths.pretrain_dir), *((f, paths.sft_dir(f)) for f in sft_folders)):
        steps = checkpoint_steps(posixpath.join(folder, checkpoint_folder))
        if steps:
            checkpoints[name] = posixpath.join(folder, checkpoint_folder, f"step-{steps[-1]}")
    found["checkpoints"] = checkpoints
    found["summary"] = paths.summary
    return found


_HEADLINE = ("caption_accuracy", "t2i_accuracy", "t2i_accuracy_gain", "classify_shape_accuracy_image_given_label",
             "classify_shape_accuracy_label_given_image", "classify_color_accuracy_image_given_label",
             "classify_color_accuracy_label_given_image", "infill_image_accuracy", "infill_text_exact",
             "infill_text_exact_left_context", "infill_text_exact_gain", "vqa_accuracy")  # fmt: skip


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


_LABELS = {
    "caption_accuracy": "caption (image -> text)",
    "t2i_accuracy": "text -> image",
    "t2i_accuracy_gain": "  gain over pretrained, paired",
    "classify_shape_accuracy_image_given_label": "classify shape, image | label",
    "classify_shape_accuracy_label_given_image": "classify shape, label | image",
    "classify_color_accuracy_image_given_label": "classify colour, image | label",
    "classify_color_accuracy_label_given_image": "classify colour, label | image",
    "infill_image_accuracy": "CM3 image infilling",
    "infill_text_exact": "CM3 text infill (true length)",
    "infill_text_exact_left_context": "  left context (true length)",
    "infill_text_exact_gain": "  infill gain, paired",
    "vqa_accuracy": "visual QA",
}
_STAGE_NAMES = {"world": "world", "train_text": "text tokenizer", "train_image": "VQ-VAE", "encode": "encode",
                "pretrain": "pretrain", "sample": "sample", "encode_sft": "SFT encode", "sft": "SFT",
                "sft_lora": "LoRA SFT", "compare_sft": "SFT comparison", "report": "report"}


def _duration(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest:02d} s" if minutes else f"{rest} s"


def summary_screen(summary: dict[str, Any]) -> str:
    """The demo's last screen: what it produced and where, then the headline figures (from ``demo_summary``)."""
    machine = summary["machine"]
    # which CPU family: the demo's step count and its training dtype follow from it (mmgen/config/presets.py)
    bf16 = "AMX-BF16" if machine.get("cpu_amx_bf16") else "native bf16" if machine.get("cpu_bf16") else "no native bf16"
    hardware = machine["gpu"] or f"{machine['cpu'] or 'CPU'}, {bf16}, {machine['cores']} cores"
    out = summary["outputs"]
    rule = "=" * 78
    lines = [rule, f"Finished: {out['run']}  ({_duration(summary['total_seconds'])} of stages on {hardware})", rule,
             "What it produced:"]
    rows = [("report", out.get("report"), "held-out metrics, learning curve, samples"),
            ("samples", out.get("samples"), f"{sum(f.endswith('.json') for f in summary['samples'])} sampled document(s)"),
            *((f"checkpoint ({name})", path, "") for name, path in out["checkpoints"].items()),
            ("curves", out.get("tensorboard") and f"tensorboard --logdir {out['tensorboard']}", ""),
            ("these figures", out["summary"], "")]  # fmt: skip
    for name, where, note in rows:
        if where:
            lines.append(f"  {name:<22} {where}" + (f"   ({note})" if note else ""))
    lines += ["", f"Pretraining, steps {summary['first_logged_step']}-{summary['last_logged_step']}:  "
                  f"text loss {summary['text_loss_first']:.2f} -> {summary['text_loss_last']:.2f},  "
                  f"image loss {summary['image_loss_first']:.2f} -> {summary['image_loss_last']:.2f}",
              f"Image tokenizer:  PSNR {summary['vq_psnr']:.1f} dB"
              + (f", codebook usage {summary['vq_codebook_usage']:.0%}" if summary.get("vq_codebook_usage") is not None else "")]
    if summary["headline"]:
        lines += ["", f"{'Held-out accuracy':<32} {'model':<26} {'value':>6}  {'95 % interval':<15}  items"]
        for model, metrics in summary["headline"].items():
            for key, (value, interval, items) in metrics.items():
                # bracketed, since a gain's bounds can be negative
                low_high = f"[{interval[0]:.3f}, {interval[1]:.3f}]" if interval else ""
                lines.append(f"  {_LABELS.get(key, key):<30} {model:<26} {value:6.3f}  {low_high:<15}  {items or ''}")
    lines.append("")
    line = "Minutes per stage:"
    for stage, seconds in summary["stage_seconds"].items():
        item = f"  {_STAGE_NAMES.get(stage, stage)} {seconds / 60:.1f}"
        if len(line) + len(item) > len(rule):
            lines.append(line)
            line = " " * len("Minutes per stage:")
        line += item
    lines += [line, rule]
    return "\n".join(lines)
