"""Fine-tune a pretrained decoder on the SFT task mixture (captioning, text-to-image, visual QA).

    torchrun --standalone --nproc_per_node=2 train/sft.py --config demo
    python train/sft.py --config demo          # starts `processes` ranks itself

Needs tokenizers/encode_sft.py and a pretraining checkpoint; writes
``<run>/sft/`` (checkpoints, TensorBoard, loss log). Starting the same command
again resumes.
"""

import json
import os
import sys
import time

import fsspec

from mmgen.cli import run_cli
from mmgen.config import RunPaths, load_config


def main() -> None:
    cfg = load_config(description=__doc__)
    from mmgen.train.sft import build_sft_config, check_sft_inputs
    from mmgen.train.trainer import run_pretraining

    start = time.time()
    if "LOCAL_RANK" not in os.environ:
        check_sft_inputs(cfg)
        from mmgen.train.launch import launch_local

        launch_local(__file__, sys.argv[1:], processes=cfg.processes)
    else:
        run_pretraining(cfg, build_sft_config(cfg))
        if os.environ.get("RANK", "0") != "0":
            return
    with fsspec.open(RunPaths(cfg.run_dir).stage_timing(cfg.sft.folder), "w", auto_mkdir=True) as f:
        json.dump({"seconds": time.time() - start}, f)


if __name__ == "__main__":
    run_cli(main)
