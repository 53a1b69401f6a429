"""Write ``<run>/demo_summary.json`` and print the demo's last screen: what the run produced and where
(report, samples, checkpoints), first and last text/image losses, VQ PSNR, held-out accuracies, minutes per stage.

    python eval/summary.py --config demo
"""

from mmgen.cli import run_cli
from mmgen.config import RunPaths, load_config
from mmgen.eval.summary import demo_summary, summary_screen
from mmgen.files import write_json


def main() -> None:
    cfg = load_config(description=__doc__)
    paths = RunPaths(cfg.run_dir)
    summary = demo_summary(paths, checkpoint_folder=cfg.checkpoint.folder)
    write_json(paths.summary, summary)
    print(summary_screen(summary))


if __name__ == "__main__":
    run_cli(main)
