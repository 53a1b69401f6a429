"""Generation and generative-classification throughput, each against a baseline measured in the same run.

    python benchmarks/generation.py [--dim 256 --layers 4 --batch 4 --new-tokens 132 --labels 3,6,16]

1. Decode tokens/s of ``sample`` (KV cache, batch of prompts): eager vs
   the whole decode step compiled as one graph (compile time reported apart,
   not in the rate), and the uncached full-forward reference.
2. Classification images/s for N labels, both directions, with and without
   prefix KV reuse.
The model has random weights (throughput does not depend on training) and the
shapes of the demo (vocab 512 text + 512 codes, 8x8 code grid). On CPU it runs
on one thread, as the CLIs do.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

from figures import Figure

from mmgen.config.schema import ModelConfig
from mmgen.eval.classify import image_given_label_scores, label_given_image_scores
from mmgen.generation.sampler import SamplingParams, sample
from mmgen.model import Transformer
from mmgen.tokenizers.vocab import Vocab

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from sampling_reference import FullRecompute  # noqa: E402  (the tests' reference decoding)


def timed(fn, repeats: int) -> float:
    """Best wall time of ``repeats`` calls (noise on a shared machine only ever adds time)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=132, help="two 8x8 images' worth")
    parser.add_argument("--labels", default="3,6,16")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        torch.set_num_threads(1)
    vocab = Vocab.build(text_vocab_size=512, codebook_size=512, grid=(8, 8))
    torch.manual_seed(0)
    model = Transformer(ModelConfig(dim=args.dim, n_layers=args.layers, n_heads=4), vocab.size).to(device).eval()
    model.init_weights()
    print(f"device {device}, threads {torch.get_num_threads()}, model {model.num_params() / 1e6:.2f}M params")

    T0 = vocab.text_range[0]
    prompts = [[vocab.bos, *range(T0 + 1, T0 + 1 + 10 + b)] for b in range(args.batch)]
    params = SamplingParams(max_new_tokens=args.new_tokens, temperature=1.0, max_images=2, force_image=True, eos_stops=False)
    guided = dataclasses.replace(params, cfg_scale=3.0)
    tokens = args.batch * args.new_tokens

    eager = timed(lambda: sample(model, vocab, prompts, params), args.repeats)
    print(f"decode eager:    {tokens / eager:8.1f} tokens/s  (batch {args.batch}, {args.new_tokens} new tokens)")
    full = timed(lambda: sample(model, vocab, prompts, params, decoding=FullRecompute(model)), 1)
    print(f"decode no cache: {tokens / full:8.1f} tokens/s  (KV cache speed-up x{full / eager:.2f})")
    cfg = timed(lambda: sample(model, vocab, prompts, guided), args.repeats)
    print(f"decode with CFG: {tokens / cfg:8.1f} tokens/s  (2 streams batched; x{cfg / eager:.2f} the time)")
    if not args.no_compile:
        start = time.perf_counter()
        sample(model, vocab, prompts, params, compile=True)
        warmup = time.perf_counter() - start
        compiled = timed(lambda: sample(model, vocab, prompts, params, compile=True), args.repeats)
        print(f"decode compiled: {tokens / compiled:8.1f} tokens/s  (x{eager / compiled:.2f} vs eager; "
              f"first call incl. compile {warmup:.1f}s)")

    grids = random_grids(vocab, args.images)
    for n in (int(x) for x in args.labels.split(",")):
        for direction in CLASSIFY_DIRECTIONS:
            with_reuse = timed(lambda: classify(model, vocab, grids, n, direction, reuse=True), args.repeats)
            without = timed(lambda: classify(model, vocab, grids, n, direction, reuse=False), args.repeats)
            print(f"classify {direction} N={n:2d}: {len(grids) / with_reuse:7.1f} images/s with prefix reuse, "
                  f"{len(grids) / without:7.1f} without (x{without / with_reuse:.2f})")


CLASSIFY_DIRECTIONS = ("image|label", "label|image")


def random_grids(vocab, count: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    codebook = vocab.image_range[1] - vocab.image_range[0]
    return [torch.randint(0, codebook, vocab.grid, generator=generator) for _ in range(count)]


def classify(model, vocab, grids, n: int, direction: str, *, reuse: bool) -> torch.Tensor:
    """Scores of ``n`` labels for every grid in ``direction``, with prompts shaped like the report's: they share
    "BOS Here is a drawing of a" and differ in one label token."""
    T0 = vocab.text_range[0]
    if direction == "image|label":
        prompts = [[vocab.bos, *range(T0 + 1, T0 + 7), T0 + 100 + k, T0 + 8] for k in range(n)]
        return image_given_label_scores(model, vocab, grids, [prompts] * len(grids), batch_size=64,
                                        reuse_prefix=reuse)
    follows = [[T0 + 20, T0 + 21, T0 + 100 + k, T0 + 22] for k in range(n)]
    return label_given_image_scores(model, vocab, grids, [vocab.bos], [follows] * len(grids), batch_size=64,
                                    reuse_prefix=reuse)


def classification_figures(model, vocab, label_counts, images: int, repeats: int) -> list[Figure]:
    """Images/s for each number of labels and direction, with prefix reuse against without."""
    grids = random_grids(vocab, images)
    figures = []
    for n in label_counts:
        for direction in CLASSIFY_DIRECTIONS:
            reuse = timed(lambda: classify(model, vocab, grids, n, direction, reuse=True), repeats)
            plain = timed(lambda: classify(model, vocab, grids, n, direction, reuse=False), repeats)
            figures.append(Figure("5 classify", f"{direction} N={n} with prefix reuse", images / reuse, "images/s",
                                  "without reuse", images / plain))
    return figures


if __name__ == "__main__":
    with torch.inference_mode():
        main()
