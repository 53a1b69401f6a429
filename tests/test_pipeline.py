"""End to end: the debug config through every stage, pretraining on 2 processes, then resume."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def stage(args, out_dir, *extra, env=None):
    proc = subprocess.run(
        [*args, "--config", "debug", "--output_dir", str(out_dir), *extra],
        cwd=ROOT, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )
    assert proc.returncode == 0, f"{args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def script(name):
    return [sys.executable, str(ROOT / name)]


@pytest.mark.slow
def test_debug_pipeline_every_stage_then_resume(tmp_path):
    out = tmp_path / "run"
    stage(script("data/make_world.py"), out)
    stage(script("tokenizers/train_text.py"), out)
    stage(script("tokenizers/train_image.py"), out)
    stage(script("tokenizers/encode.py"), out)
    console = stage([*TORCHRUN, str(ROOT / "train/pretrain.py")], out)
    console = console.stdout + console.stderr
    assert console.count("step:  1 ") == 1, console  # rank 0 logs, once
    for unwanted in ("lspci", "A100", "-0.00GiB", "DTensor", "initial_load_model_only", "TORCH_NCCL"):
        assert unwanted not in console, (unwanted, console)
    assert "GFLOP/s, the best " in console and "mfu: " in console  # float32 or bfloat16 by CPU
    stage(script("eval/sample.py"), out, "--prompt", "a small blue square", "--sample.dtype", "bfloat16")
    stage(script("eval/report.py"), out)
    screen = stage(script("eval/summary.py"), out).stdout
    assert "What it produced" in screen and str(out / "pretrain" / "checkpoint" / "step-6") in screen

    assert list((out / "corpus" / "train").glob("*.parquet"))
    assert (out / "tokenizers" / "text.model").exists()
    assert (out / "tokenizers" / "image" / "model.safetensors").exists()
    assert (out / "tokens" / "train" / "manifest.json").exists()
    assert list((out / "pretrain" / "tb").rglob("events.out.tfevents.*"))
    assert (out / "pretrain" / "checkpoint" / "step-6" / ".metadata").exists()

    sample = json.loads((out / "samples" / "sample-0.json").read_text())
    assert sample["images"], "force_image makes every sample hold an image"
    assert (out / "samples" / sample["images"][0]).exists()
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    for key in ("text_bits_per_token", "image_bits_per_token", "caption_accuracy", "t2i_accuracy", "vq_psnr",
                "classify_accuracy_image_given_label", "classify_accuracy_label_given_image"):
        assert key in metrics
    assert (out / "eval" / "report.html").exists()

    summary = json.loads((out / "demo_summary.json").read_text())
    for key in ("text_loss_first", "text_loss_last", "image_loss_first", "image_loss_last", "vq_psnr"):
        assert isinstance(summary[key], float)
    assert summary["text_loss_last"] < summary["text_loss_first"]
    assert {"world", "train_text", "train_image", "encode", "pretrain", "sample", "report"} <= set(summary["stage_seconds"])

    # the same command with a higher step budget continues from the last checkpoint
    proc = stage(script("train/pretrain.py"), out, "--training.steps", "8")
    assert "Training starts at step 7" in proc.stdout + proc.stderr
    steps = [json.loads(line)["step"] for line in (out / "pretrain" / "loss_log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))


@pytest.mark.parametrize("name", ["train/pretrain.py", "eval/sample.py", "tokenizers/encode.py"])
def test_missing_inputs_are_one_line(name, tmp_path):
    proc = subprocess.run(
        [*script(name), "--config", "debug", "--output_dir", str(tmp_path / "empty")],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "empty" in lines[0], proc.stderr
