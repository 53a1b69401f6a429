"""Pretraining with and without retrieval augmentation, same token budget: held-out bits per token.

    python benchmarks/retrieval_ablation.py --config demo [--section.field VALUE ...]

Needs a run folder that went through tokenizers/encode.py, retrieval/train_encoder.py
and retrieval/build_index.py. Trains twice from scratch into
``<run>/ablation/{plain,retrieval}`` (same steps, batch and sequence length, so
the same number of training tokens), then scores the main documents of the
held-out split: the plain model after BOS, the augmented model after its
retrieved neighbours. In a world with named entities (``world.entities``) both
models also take the knowledge measurements of the report (mmgen/eval/knowledge.py:
text-to-image and captioning of head and tail entities, bits per token of
documents that mention them, each model without and with retrieval at evaluation
time from the same bank, and the retriever's recall of the defining documents).
Prints both side by side and writes ``<run>/ablation/retrieval_ablation.json``.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from mmgen.cli import run_cli
from mmgen.config import RunPaths, load_config
from mmgen.data.entities import has_entities
from mmgen.data.token_shards import TokenShards
from mmgen.device import generation_device
from mmgen.eval.knowledge import evaluate_knowledge, load_knowledge_retriever
from mmgen.model.checkpoint import load_trained_model
from mmgen.retrieval.augment import retrieved_prefix
from mmgen.retrieval.bank_documents import bank_documents
from mmgen.retrieval.evaluation import main_document_bits
from mmgen.retrieval.neighbours import load_neighbours
from mmgen.tokenizers.run import load_run_tokenizer
from mmgen.tokenizers.vocab import Vocab

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    cfg = load_config(description=__doc__)
    paths = RunPaths(cfg.run_dir)
    vocab = Vocab.load(paths.vocab)
    heldout = TokenShards(paths.tokens("heldout"))
    bank = bank_documents(paths)
    entities = has_entities(paths)
    neighbours = load_neighbours(paths.neighbours("heldout"), heldout)
    overrides = [a for a in sys.argv[1:]]
    results = {}
    for mode in ("plain", "retrieval"):
        out = Path(cfg.run_dir) / "ablation" / mode
        out.mkdir(parents=True, exist_ok=True)
        for name in ("tokenizers", "tokens", "retrieval"):  # the retrieval run reads retrieval/neighbours/
            link = out / name
            if not link.exists():
                link.symlink_to(Path(cfg.run_dir).resolve() / name)
        cmd = [sys.executable, str(ROOT / "train/pretrain.py"), *overrides, "--output_dir", str(out),
               "--retrieval.enable", str(mode == "retrieval").lower()]
        print("=== " + " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        model, step = load_trained_model(str(out / "pretrain"))
        torch.set_num_threads(os.cpu_count() or 1)
        docs = [heldout[i] for i in range(len(heldout))]
        if mode == "plain":
            prefixes = [[vocab.bos]] * len(docs)
        else:
            # cut as training cuts them (mmgen.retrieval.augment): the main document keeps its full length
            row = cfg.training.seq_len + 1
            prefixes = [
                retrieved_prefix([bank[int(j)] for j in neighbours[i] if j >= 0], bos=vocab.bos, eos=vocab.eos,
                                 sep=vocab.sep, max_len=max(row - len(docs[i]), 1), boi=vocab.boi, eoi=vocab.eoi)
                for i in range(len(docs))
            ]
        results[mode] = {"step": step, **main_document_bits(model, docs, prefixes, image_range=vocab.image_range,
                                                              max_len=cfg.model.max_seq_len)}
        if entities:
            device = generation_device()
            knowledge = evaluate_knowledge(cfg, paths, model.to(device), load_run_tokenizer(paths, device),
                                           retriever=load_knowledge_retriever(cfg, paths, device))  # fmt: skip
            results[mode]["knowledge"] = knowledge["metrics"]
    tokens = cfg.training.steps * cfg.training.local_batch_size * cfg.training.seq_len * cfg.processes
    report = {"training_tokens_each": tokens, **results}
    print(f"\nheld-out bits per token of main documents, {tokens:,} training tokens each")
    for key in ("text_bits_per_token", "image_bits_per_token"):
        print(f"  {key:<22} plain {results['plain'][key]:.4f}   retrieval-augmented {results['retrieval'][key]:.4f}")
    if entities:
        print("knowledge of named entities (model trained plain / augmented; evaluated without / with retrieval):")
        for key in sorted(k for k in results["plain"]["knowledge"] if k.startswith("knowledge_plain_")
                          and not k.endswith(("_ci95", "_items"))):  # fmt: skip
            name = key.removeprefix("knowledge_plain_")
            cells = [results[m]["knowledge"].get(f"knowledge_{e}_{name}", float("nan"))
                     for m in ("plain", "retrieval") for e in ("plain", "retrieval")]  # fmt: skip
            print(f"  {name:<34} " + "  ".join(f"{v:.3f}" for v in cells))
    with open(Path(cfg.run_dir) / "ablation" / "retrieval_ablation.json", "w") as f:
        json.dump(report, f, indent=2)


if __name__ == "__main__":
    run_cli(main)
