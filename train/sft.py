"""Fine-tune a pretrained decoder on the SFT task mixture (captioning, text-to-image, visual QA).

    torchrun --standalone --nproc_per_node=2 train/sft.py --config demo
    python train/sft.py --config demo          # starts `processes` ranks itself

Needs tokenizers/encode_sft.py and a pretraining checkpoint; writes
``<run>/sft/`` (checkpoints, TensorBoard, loss log). Starting the same command
again resumes.
"""

import os
import sys

from mmgen.cli import run_cli, start_stage


def main() -> None:
    stage = start_stage("sft", __doc__)
    cfg = stage.cfg
    stage.name = cfg.sft.folder  # timed under its folder's name: several fine-tunings may run
    from mmgen.device import torchrun_rank
    from mmgen.train.sft import build_sft_config, check_sft_inputs
    from mmgen.train.console import rank_console
    from mmgen.train.trainer import end_rank_process, run_pretraining

    if "LOCAL_RANK" in os.environ:  # one rank of a torchrun job
        rank_console(int(os.environ["RANK"]))  # building torchtitan's config logs already
        run_pretraining(cfg, build_sft_config(cfg))
        if torchrun_rank()[0] == 0:
            stage.record_timing()
        end_rank_process()
    check_sft_inputs(cfg)
    from mmgen.train.launch import launch_local

    launch_local(__file__, sys.argv[1:], processes=cfg.processes)
    stage.record_timing()


if __name__ == "__main__":
    run_cli(main)
