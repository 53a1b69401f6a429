"""Pretrain the early-fusion decoder through torchtitan (FSDP2, DCP checkpoints, TensorBoard).

    torchrun --standalone --nproc_per_node=2 train/pretrain.py --config demo
    python train/pretrain.py --config demo          # starts `processes` ranks itself

Starting the same command again resumes from the newest checkpoint.
"""

import json
import os
import sys
import time

from mmgen.cli import run_cli
from mmgen.config import RunPaths, load_config


def main() -> None:
    cfg = load_config(description=__doc__)
    from mmgen.train.trainer import check_pretraining_inputs, run_pretraining

    if "LOCAL_RANK" not in os.environ:
        check_pretraining_inputs(cfg)
        from mmgen.train.launch import launch_local

        start = time.time()
        launch_local(__file__, sys.argv[1:], processes=cfg.processes)
        timing = {"seconds": time.time() - start, "processes": cfg.processes}
    else:
        start = time.time()
        run_pretraining(cfg)
        if os.environ.get("RANK", "0") != "0":
            return
        timing = {"seconds": time.time() - start, "processes": int(os.environ.get("WORLD_SIZE", "1"))}
    import fsspec

    with fsspec.open(RunPaths(cfg.run_dir).stage_timing("pretrain"), "w", auto_mkdir=True) as f:
        json.dump(timing, f)


if __name__ == "__main__":
    run_cli(main)
