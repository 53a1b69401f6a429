"""Pretrain the early-fusion decoder through torchtitan (FSDP2, DCP checkpoints, TensorBoard).

    torchrun --standalone --nproc_per_node=2 train/pretrain.py --config demo
    python train/pretrain.py --config demo          # starts `processes` ranks itself

Starting the same command again resumes from the newest checkpoint.
"""

import os
import sys

from mmgen.cli import run_cli, start_stage


def main() -> None:
    stage = start_stage("pretrain", __doc__)
    cfg = stage.cfg
    from mmgen.device import torchrun_rank
    from mmgen.train.trainer import check_pretraining_inputs, end_rank_process, run_pretraining

    if "LOCAL_RANK" in os.environ:  # one rank of a torchrun job
        run_pretraining(cfg)
        rank, world = torchrun_rank()
        if rank == 0:
            stage.record_timing(processes=world)
        end_rank_process()
    check_pretraining_inputs(cfg)
    from mmgen.train.launch import launch_local

    launch_local(__file__, sys.argv[1:], processes=cfg.processes)
    stage.record_timing(processes=cfg.processes)


if __name__ == "__main__":
    run_cli(main)
