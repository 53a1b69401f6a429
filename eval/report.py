"""Write the evaluation report of a trained run: ``<run>/eval/metrics.json`` and ``<run>/eval/report.html``.

    python eval/report.py --config demo

Held-out bits per token (text, image), caption accuracy, text-to-image
accuracy, generative classification (shape and colour, both directions) and
VQ PSNR, each accuracy with its chance level measured in the same run; the
page shows the generated images and captions. Settings: the ``eval`` section.
"""

import json
import time

import torch

from mmgen.cli import run_cli
from mmgen.config import RunPaths, load_config
from mmgen.device import default_device
from mmgen.eval.report import eval_dir, write_report
from mmgen.files import write_json
from mmgen.model.checkpoint import load_trained_model
from mmgen.tokenizers.run import load_run_tokenizer


def main() -> None:
    cfg = load_config(description=__doc__)
    paths = RunPaths(cfg.run_dir)
    start = time.time()
    device = default_device()
    if device.type == "cpu":
        # one-token decode steps are tiny: a second thread costs more in handoff than it computes
        torch.set_num_threads(1)
    model, step = load_trained_model(paths.pretrain_dir, checkpoint_folder=cfg.checkpoint.folder,
                                     step=cfg.sample.checkpoint_step, device=device)
    tokenizer = load_run_tokenizer(paths, device)
    metrics = write_report(cfg, paths, model, tokenizer, step)
    summary = {k: v for k, v in metrics.items() if isinstance(v, float)}
    print(json.dumps(summary, indent=1))
    print(f"wrote {eval_dir(paths)}/metrics.json and report.html")
    write_json(paths.stage_timing("report"), {"seconds": time.time() - start, "step": step})


if __name__ == "__main__":
    run_cli(main)
