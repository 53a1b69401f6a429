"""The demo's last screen: what a run produced, where, and its headline figures."""

import json

from mmgen.config import RunPaths
from mmgen.eval.summary import STAGES, demo_summary, summary_screen


def write(path, content):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content if isinstance(content, str) else json.dumps(content))


def test_the_last_screen_names_what_was_produced_and_the_headline_figures(tmp_path):
    run = tmp_path / "run"
    write(run / "pretrain/loss_log.jsonl", "".join(json.dumps({"step": s, "text_loss": t, "image_loss": i}) + "\n"
                                                     for s, t, i in ((1, 6.9, 7.0), (10, 2.0, 3.0), (20, 1.25, 2.5))))
    write(run / "tokenizers/image/metrics.json", {"psnr": 24.62, "codebook_usage": 0.5})
    for stage in (*STAGES, "sft"):
        write(run / "timings" / f"{stage}.json", {"seconds": 90.0})
    for folder, step in (("pretrain", 10), ("pretrain", 20), ("sft", 7)):
        write(run / folder / "checkpoint" / f"step-{step}" / ".metadata", "")
    write(run / "pretrain/checkpoint/step-30/half-written", "")  # no .metadata: not a checkpoint
    write(run / "samples/index.html", "")
    write(run / "samples/sample-0.json", {})
    write(run / "eval/report.html", "")
    write(run / "eval/metrics.json", {"caption_accuracy": 0.5123, "caption_accuracy_ci95": [0.45, 0.57],
                                      "caption_accuracy_items": 300, "infill_text_exact_gain": -0.01,
                                      "infill_text_exact_gain_ci95": [-0.043, 0.02], "infill_text_exact_gain_items": 300})
    write(run / "eval/sft_metrics.json", {"pretrained": {"t2i_accuracy": 0.884},
                                          "sft": {"t2i_accuracy": 0.902, "t2i_accuracy_gain": 0.018,
                                                  "t2i_accuracy_gain_ci95": [0.008, 0.028], "t2i_accuracy_gain_items": 300,
                                                  "item_scores": {"t2i_accuracy": [[9, 10]] * 300}}})

    summary = demo_summary(RunPaths(str(run)))
    assert summary["outputs"]["checkpoints"] == {"pretrain": f"{run}/pretrain/checkpoint/step-20",
                                                 "sft": f"{run}/sft/checkpoint/step-7"}
    assert "tensorboard" not in summary["outputs"]  # only what exists
    screen = summary_screen(summary)
    for expected in (f"{run}/eval/report.html", f"{run}/samples/index.html", f"{run}/pretrain/checkpoint/step-20",
                     f"{run}/sft/checkpoint/step-7", f"{run}/demo_summary.json", "10 min 30 s of stages",
                     "text loss 6.90 -> 1.25", "image loss 7.00 -> 2.50", "PSNR 24.6 dB", "codebook usage 50%",
                     "report: pretrained", "0.512  [0.450, 0.570]", "-0.010  [-0.043, 0.020]", "VQ-VAE 1.5"):
        assert expected in screen, (expected, screen)
    # the fine-tuned model's paired gain over the pretrained one, on its own line under its model
    gain = next(line for line in screen.splitlines() if "gain over pretrained, paired" in line)
    assert "sft comparison: sft" in gain and "0.018  [0.008, 0.028]" in gain and gain.endswith(" 300")
    assert max(len(line) for line in screen.splitlines() if "/" not in line) <= 90
    # the CPU family, which sets the demo's steps and training dtype
    for flags, family in (({"cpu_amx_bf16": True, "cpu_bf16": True}, "AMX-BF16, 2 cores"),
                          ({"cpu_amx_bf16": False, "cpu_bf16": True}, "native bf16, 2 cores"),
                          ({"cpu_amx_bf16": False, "cpu_bf16": False}, "no native bf16, 2 cores")):
        summary["machine"] |= {"gpu": None, "cores": 2, **flags}
        assert family in summary_screen(summary).splitlines()[1]
