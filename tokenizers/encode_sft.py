"""Build and pretokenize the SFT task mixture from the run's caption pairs.

    python tokenizers/encode_sft.py --config demo [--sft.tasks caption=1,t2i=1,vqa=1]

Writes ``<run>/tokens/sft-{train,heldout,validation}``: one sequence per example,
``BOS task instruction SEP input SEP output EOS``, with the position where the
loss starts, the task, and the ground truth in each example's metadata. The
validation prompts are for choosing settings (``eval/compare_sft.py --eval.split
validation``); a world made before it wrote validation caption pairs gets none.
"""

import torch

from mmgen.cli import run_cli, start_stage
from mmgen.config import ConfigError
from mmgen.data.sft_tasks import task_examples
from mmgen.data.token_shards import TokenShardWriter
from mmgen.files import exists
from mmgen.progress import progress_bar
from mmgen.retrieval.pairs import read_caption_pairs
from mmgen.tokenizers.run import load_run_tokenizer
from mmgen.tokenizers.sft import encode_sft_examples


def parse_tasks(spec: str) -> dict[str, float]:
    try:
        weights = {k.strip(): float(v) for k, v in (item.split("=") for item in spec.split(",") if item.strip())}
    except ValueError:
        raise ConfigError(f"bad value for 'sft.tasks': {spec!r} (expected task=weight,...)") from None
    if not weights:
        raise ConfigError("bad value for 'sft.tasks': no task given")
    return weights


def main() -> None:
    stage = start_stage("encode_sft", __doc__)
    cfg, paths = stage.cfg, stage.paths
    weights = parse_tasks(cfg.sft.tasks)
    torch.set_grad_enabled(False)
    tokenizer = load_run_tokenizer(paths)
    vocab = tokenizer.vocab
    summary = {}
    for seed_offset, split in enumerate(("train", "heldout", "validation")):
        source = paths.caption_pairs(split)
        if split == "validation" and not exists(source):
            print(f"sft-validation: skipped, no {source} (worlds made before validation caption pairs have none; "
                  "README.md, 'Choosing SFT settings', says how to add them)")
            continue
        pairs = read_caption_pairs(source, limit=cfg.sft.train_pairs if split == "train" else 0)
        # held-out and validation prompts carry no condition dropout: they measure the conditional model
        examples = task_examples(pairs, weights, condition_dropout=cfg.sft.condition_dropout if split == "train" else 0.0,
                                 seed=cfg.sft.seed + seed_offset)
        writer = TokenShardWriter(paths.tokens(f"sft-{split}"), vocab_size=vocab.size, tokens_per_shard=cfg.data.tokens_per_shard)
        counts: dict[str, int] = {}
        with progress_bar(desc=f"sft-{split}", total=len(examples), unit="example") as bar:
            for i in range(0, len(examples), 256):
                chunk = examples[i : i + 256]
                for example, (ids, loss_start) in zip(chunk, encode_sft_examples(tokenizer, chunk)):
                    writer.add(ids, {"task": example.task, "loss_start": loss_start, **example.metadata})
                    counts[example.task] = counts.get(example.task, 0) + 1
                bar.update(len(chunk))
        manifest = writer.close({"tasks": weights})
        summary[split] = {"examples": counts, "tokens": manifest["tokens"]}
        print(f"sft-{split}: {counts}, {manifest['tokens']} tokens -> {paths.tokens(f'sft-{split}')}")
    stage.record_timing(**summary)


if __name__ == "__main__":
    run_cli(main)
