"""Generate the shapes world (OBELICS shards and caption pairs, train and held-out) into the run folder.

    python data/make_world.py --config demo [--world.seed 1 ...]
"""

from __future__ import annotations

import time

from mmgen.cli import run_cli
from mmgen.config import RunPaths, load_config
from mmgen.data.shapes_world import generate_world
from mmgen.files import write_json


def main() -> None:
    cfg = load_config(description=__doc__.strip().splitlines()[0])
    paths = RunPaths(cfg.run_dir)
    start = time.perf_counter()
    counts = generate_world(cfg.world, paths)
    seconds = time.perf_counter() - start
    for key, value in counts.items():
        print(f"{key}: {value}")
    print(f"wrote {paths.corpus_dir} in {seconds:.1f}s")
    write_json(paths.stage_timing("world"), {"seconds": round(seconds, 3)})


if __name__ == "__main__":
    run_cli(main)
