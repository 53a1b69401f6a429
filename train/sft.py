"""Fine-tune a pretrained decoder on the SFT task mixture (captioning, text-to-image, visual QA).

    torchrun --standalone --nproc_per_node=2 train/sft.py --config demo
    python train/sft.py --config demo          # starts `processes` ranks itself

Needs tokenizers/encode_sft.py and a pretraining checkpoint; writes
``<run>/sft/`` (checkpoints, TensorBoard, loss log). Starting the same command
again resumes.
"""

import os
import sys
import time

from mmgen.cli import run_cli
from mmgen.config import RunPaths, load_config
from mmgen.files import write_json


def main() -> None:
    cfg = load_config(description=__doc__)
    from mmgen.train.sft import build_sft_config, check_sft_inputs
    from mmgen.train.console import rank_console
    from mmgen.train.trainer import end_rank_process, run_pretraining

    timing = RunPaths(cfg.run_dir).stage_timing(cfg.sft.folder)
    start = time.time()
    if "LOCAL_RANK" in os.environ:  # one rank of a torchrun job
        rank_console(int(os.environ["RANK"]))  # building torchtitan's config logs already
        run_pretraining(cfg, build_sft_config(cfg))
        if os.environ.get("RANK", "0") == "0":
            write_json(timing, {"seconds": time.time() - start})
        end_rank_process()
    check_sft_inputs(cfg)
    from mmgen.train.launch import launch_local

    launch_local(__file__, sys.argv[1:], processes=cfg.processes)
    write_json(timing, {"seconds": time.time() - start})


if __name__ == "__main__":
    run_cli(main)
