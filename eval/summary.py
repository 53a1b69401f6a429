"""Write ``<run>/demo_summary.json``: first and last text/image losses, VQ PSNR, seconds per stage.

    python eval/summary.py --config demo
"""

import json

import fsspec

from mmgen.cli import run_cli
from mmgen.config import RunPaths, load_config
from mmgen.eval.summary import demo_summary


def main() -> None:
    cfg = load_config(description=__doc__)
    paths = RunPaths(cfg.run_dir)
    summary = demo_summary(paths)
    with fsspec.open(paths.summary, "w", auto_mkdir=True) as f:
        json.dump(summary, f, indent=2)
    print(json.dumps(summary, indent=2))
    print(f"wrote {paths.summary}")


if __name__ == "__main__":
    run_cli(main)
