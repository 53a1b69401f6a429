"""The code-map noise of trained image tokenizers on the shapes world (mmgen/eval/code_noise.py).

    python benchmarks/image_code_noise.py RUN/tokenizers/image [OTHER/tokenizers/image ...]

Prints, per tokenizer: codes in a flat image, codes per cell over all one-shape scenes, codes a shape swap
changes, codes used, and its recorded held-out PSNR and code perplexity.
"""

from __future__ import annotations

import json
import os
import sys

import torch

from mmgen.eval.code_noise import code_map_noise
from mmgen.tokenizers.image import ImageTokenizer


def main(paths: list[str]) -> None:
    torch.set_num_threads(1)
    for path in paths:
        tokenizer = ImageTokenizer.load(path)
        figures = code_map_noise(tokenizer, tokenizer.image_size)
        metrics_file = os.path.join(path, "metrics.json")
        if os.path.exists(metrics_file):
            with open(metrics_file) as f:
                recorded = json.load(f)
            figures |= {k: recorded[k] for k in ("psnr", "code_perplexity") if k in recorded}
        print(path, json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in figures.items()}))


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: python benchmarks/image_code_noise.py TOKENIZER_DIR [TOKENIZER_DIR ...]")
    main(sys.argv[1:])
