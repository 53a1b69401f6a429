"""Write the evaluation report of a trained run: ``<run>/eval/metrics.json`` and ``<run>/eval/report.html``
(with ``--eval.split validation``: ``metrics_validation.json`` and ``report_validation.html`` beside them).

    python eval/report.py --config demo

Held-out bits per token (text, image), caption accuracy, text-to-image
accuracy, generative classification (shape and colour, both directions) and
VQ PSNR, each accuracy with its chance level measured in the same run; in a
world with named entities (``world.entities``) also their knowledge, head and
tail, without and with retrieval (mmgen/eval/knowledge.py); the page shows the
generated images and captions. Settings: the ``eval`` section.
"""

import json

from mmgen.cli import run_cli, start_stage
from mmgen.device import generation_device
from mmgen.eval.report import write_report
from mmgen.model.checkpoint import load_pretrained_model
from mmgen.tokenizers.run import load_run_tokenizer


def main() -> None:
    stage = start_stage("report", __doc__)
    cfg, paths = stage.cfg, stage.paths
    split = cfg.eval.split
    if split != "heldout":  # its own timing record: the minutes per stage stay those of the held-out report
        stage.name = f"report_{split}"
    device = generation_device()
    model, step = load_pretrained_model(cfg, paths, device)
    tokenizer = load_run_tokenizer(paths, device)
    metrics = write_report(cfg, paths, model, tokenizer, step)
    summary = {k: v for k, v in metrics.items() if isinstance(v, float)}
    print(json.dumps(summary, indent=1))
    print(f"wrote {paths.for_split(paths.report_metrics, split)} and {paths.for_split(paths.report_page, split)}")
    stage.record_timing(step=step)


if __name__ == "__main__":
    run_cli(main)
