"""How well the CLIP-score filter separates the noisy shapes world's corrupted pairs from the clean ones.

    python benchmarks/curation_filter.py --config debug --output_dir RUN [--curate.clip_threshold 0.3]

Reads ``<run>/curate/curation.json`` (written by data/curate.py on a world made with ``world.noise_*``) and,
from the score and the injected truth of every scored image, prints for the run's threshold and for a sweep
of thresholds and keep fractions: the share of each corruption the filter removes and of clean pairs it keeps.
"""

import json

import fsspec
import numpy as np

from mmgen.cli import run_cli, start_stage


def shares(scores: np.ndarray, kinds: np.ndarray, threshold: float) -> dict[str, float]:
    """Per injected kind: share removed (a corruption) or kept (clean, near duplicates) at ``threshold``."""
    out = {}
    for kind in sorted(set(kinds)):
        kept = float(np.mean(scores[kinds == kind] >= threshold))
        out[kind] = kept if kind in ("clean", "near_duplicate") else 1 - kept
    return out


def main() -> None:
    stage = start_stage("curation_filter", __doc__)
    path = f"{stage.paths.curation_dir}/curation.json"
    with fsspec.open(path, "r") as f:
        record = json.load(f)
    scores, kinds = np.array(record["clip_scores"]), np.array(record["clip_kinds"])
    if not len(scores) or not all(kinds):
        raise FileNotFoundError(f"{path} has no scores with noise ground truth (curate a world made with world.noise_*)")
    print("removed: misaligned, uninformative; kept: clean, near_duplicate")
    rows = [("run's threshold", record["clip_threshold"])]
    rows += [(f"threshold {t:.2f}", t) for t in np.round(np.arange(0.3, 0.81, 0.05), 2)]
    for fraction in (0.6, 0.65, 0.7, 0.75, 0.8):
        rows.append((f"top {fraction:.0%}", float(np.sort(scores)[::-1][int(round(fraction * len(scores))) - 1])))
    results = {}
    for name, threshold in rows:
        figures = shares(scores, kinds, threshold)
        results[name] = {"threshold": threshold, **figures}
        print(f"{name:>16} ({threshold:+.3f}): " + "  ".join(f"{k} {v:.3f}" for k, v in figures.items()))
    stage.record_timing(counts={k: int(np.sum(kinds == k)) for k in sorted(set(kinds))}, results=results)


if __name__ == "__main__":
    run_cli(main)
