"""Pretraining with and without retrieval augmentation, same token budget: held-out bits per token and, in a
world with named entities, knowledge of head and tail entities.

    python benchmarks/retrieval_ablation.py --config demo [--section.field VALUE ...]

Needs a run folder that went through tokenizers/encode.py, retrieval/train_encoder.py
and retrieval/build_index.py. Trains twice from scratch into
``<run>/ablation/{plain,retrieval}`` (same steps, batch and sequence length, so
the same number of training tokens; an arm whose checkpoint of the last step is
already there is not trained again), then scores the main documents of the
held-out split: the plain model after BOS, the augmented model after its
retrieved neighbours. In a world with named entities (``world.entities``) both
models also take the knowledge measurements of the report (mmgen/eval/knowledge.py:
text-to-image and captioning of head and tail entities, bits per token of
documents that mention them and of entity-free ones, each model without and with
retrieval at evaluation time from the same bank, on the same ``eval.split`` items,
and the retriever's recall of the defining documents), every figure with its
items and 95 % interval. Prints both side by side and writes
``<run>/ablation/retrieval_ablation.json``.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from mmgen.cli import run_cli
from mmgen.config import RunPaths, load_config
from mmgen.data.entities import has_entities
from mmgen.data.token_shards import TokenShards
from mmgen.device import generation_device
from mmgen.eval.knowledge import evaluate_knowledge, load_knowledge_retriever
from mmgen.files import write_atomic
from mmgen.model.checkpoint import checkpoint_steps, load_trained_model
from mmgen.retrieval.augment import retrieved_prefix
from mmgen.retrieval.bank_documents import bank_documents
from mmgen.retrieval.evaluation import main_document_bits
from mmgen.retrieval.neighbours import load_neighbours
from mmgen.tokenizers.run import load_run_tokenizer
from mmgen.tokenizers.vocab import Vocab

ROOT = Path(__file__).resolve().parents[1]
MODES = ("plain", "retrieval")


def train_arm(cfg, mode: str, out: Path, overrides: list[str]) -> float:
    """Pretrain one arm into ``out`` (seconds taken; 0 when its last step's checkpoint is already there)."""
    out.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizers", "tokens", "retrieval"):  # the retrieval run reads retrieval/neighbours/
        link = out / name
        if not link.is_symlink() and not link.exists():
            link.symlink_to(Path(cfg.run_dir).resolve() / name)
    if cfg.training.steps in checkpoint_steps(str(out / "pretrain" / "checkpoint")):
        print(f"=== {mode}: step {cfg.training.steps} already trained in {out}", flush=True)
        return 0.0
    cmd = [sys.executable, str(ROOT / "train/pretrain.py"), *overrides, "--output_dir", str(out),
           "--retrieval.enable", str(mode == "retrieval").lower()]
    print("=== " + " ".join(cmd), flush=True)
    start = time.monotonic()
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return time.monotonic() - start


def cell(figures: dict, key: str) -> str:
    """'0.812 [0.790, 0.830] n=300', or '-' when the figure is missing."""
    if key not in figures:
        return "-"
    text = f"{figures[key]:.3f}"
    if f"{key}_ci95" in figures:
        lo, hi = figures[f"{key}_ci95"]
        text += f" [{lo:.3f}, {hi:.3f}]"
    return text + (f" n={figures[f'{key}_items']}" if f"{key}_items" in figures else "")


def print_report(report: dict, entities: bool) -> None:
    results = report["arms"]
    print(f"\nheld-out bits per token of main documents, {report['training_tokens_each']:,} training tokens each")
    for key in ("text_bits_per_token", "image_bits_per_token"):
        print(f"  {key:<22} plain {cell(results['plain'], key)}   retrieval-augmented {cell(results['retrieval'], key)}")
    if not entities:
        return
    print("knowledge of named entities: model trained plain / augmented, evaluated without / with retrieval")
    names = sorted({k.removeprefix("knowledge_plain_") for k in results["plain"]["knowledge"]
                    if k.startswith("knowledge_plain_") and not k.endswith(("_ci95", "_items"))})  # fmt: skip
    for name in names:
        print(f"  {name}")
        for model in MODES:
            figures = results[model]["knowledge"]
            print(f"    trained {model:<9}  " + "   ".join(f"{e}: {cell(figures, f'knowledge_{e}_{name}')}" for e in MODES))
    recall = {k: v for k, v in results["retrieval"]["knowledge"].items() if "_recall@" in k}
    for key in sorted(k for k in recall if not k.endswith(("_ci95", "_items"))):
        print(f"  {key.removeprefix('knowledge_'):<28} {cell(recall, key)}")


def main() -> None:
    cfg = load_config(description=__doc__)
    paths = RunPaths(cfg.run_dir)
    vocab = Vocab.load(paths.vocab)
    heldout = TokenShards(paths.tokens("heldout"))
    bank = bank_documents(paths)
    entities = has_entities(paths)
    neighbours = load_neighbours(paths.neighbours("heldout"), heldout)
    overrides = list(sys.argv[1:])
    results = {}
    for mode in MODES:
        out = Path(cfg.run_dir) / "ablation" / mode
        seconds = train_arm(cfg, mode, out, overrides)
        model, step = load_trained_model(str(out / "pretrain"))
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1)))
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
        bits = main_document_bits(model, docs, prefixes, image_range=vocab.image_range, max_len=cfg.model.max_seq_len)
        results[mode] = {"step": step, "train_seconds": round(seconds, 1), "documents": len(docs), **bits}
        for key in ("text_bits_per_token", "image_bits_per_token"):
            results[mode][f"{key}_items"] = len(docs)
        if entities:
            device = generation_device()
            knowledge = evaluate_knowledge(cfg, paths, model.to(device), load_run_tokenizer(paths, device),
                                           retriever=load_knowledge_retriever(cfg, paths, device))  # fmt: skip
            results[mode]["knowledge"] = knowledge["metrics"]
    tokens = cfg.training.steps * cfg.training.local_batch_size * cfg.training.seq_len * cfg.processes
    report = {"training_tokens_each": tokens, "retriever": cfg.retrieval.retriever, "eval_split": cfg.eval.split,
              "arms": results}  # fmt: skip
    print_report(report, entities)
    write_atomic(str(Path(cfg.run_dir) / "ablation" / "retrieval_ablation.json"), json.dumps(report, indent=2))


if __name__ == "__main__":
    run_cli(main)
