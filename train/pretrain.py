"""Pretrain the early-fusion decoder through torchtitan (FSDP2, DCP checkpoints, TensorBoard).

    torchrun --standalone --nproc_per_node=2 train/pretrain.py --config demo
    python train/pretrain.py --config demo          # starts `processes` ranks itself

Starting the same command again resumes from the newest checkpoint.
"""

import os
import sys
import time

from mmgen.cli import run_cli
from mmgen.config import RunPaths, load_config
from mmgen.files import write_json


def main() -> None:
    cfg = load_config(description=__doc__)
    from mmgen.train.trainer import check_pretraining_inputs, end_rank_process, run_pretraining

    timing = RunPaths(cfg.run_dir).stage_timing("pretrain")
    start = time.time()
    if "LOCAL_RANK" in os.environ:  # one rank of a torchrun job
        run_pretraining(cfg)
        if os.environ.get("RANK", "0") == "0":
            write_json(timing, {"seconds": time.time() - start, "processes": int(os.environ.get("WORLD_SIZE", "1"))})
        end_rank_process()
    check_pretraining_inputs(cfg)
    from mmgen.train.launch import launch_local

    launch_local(__file__, sys.argv[1:], processes=cfg.processes)
    write_json(timing, {"seconds": time.time() - start, "processes": cfg.processes})


if __name__ == "__main__":
    run_cli(main)
