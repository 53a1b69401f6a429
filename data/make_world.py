"""Generate the shapes world into the run folder: train and held-out documents; train, held-out and validation captions.

    python data/make_world.py --config demo [--world.seed 1 ...]
"""

from __future__ import annotations

from mmgen.cli import run_cli, start_stage
from mmgen.data.shapes_world import generate_world


def main() -> None:
    stage = start_stage("world", __doc__.strip().splitlines()[0])
    counts = generate_world(stage.cfg.world, stage.paths)
    for key, value in counts.items():
        print(f"{key}: {value}")
    print(f"wrote {stage.paths.corpus_dir} in {stage.seconds:.1f}s")
    stage.record_timing()


if __name__ == "__main__":
    run_cli(main)
