"""Write ``<run>/demo_summary.json`` and print the demo's last screen: what the run produced and where
(report, samples, checkpoints), first and last text/image losses, VQ PSNR, held-out accuracies, minutes per stage.

    python eval/summary.py --config demo
"""

from mmgen.cli import run_cli, start_stage
from mmgen.eval.summary import demo_summary, summary_screen
from mmgen.files import write_json


def main() -> None:
    stage = start_stage("summary", __doc__)
    paths = stage.paths
    summary = demo_summary(paths, checkpoint_folder=stage.cfg.checkpoint.folder)
    write_json(paths.summary, summary)
    print(summary_screen(summary))


if __name__ == "__main__":
    run_cli(main)
