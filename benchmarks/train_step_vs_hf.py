"""mmgen's training step against Hugging Face's ChameleonForConditionalGeneration, in one process.

Both models get the same configuration, the same weights (the Hugging Face
model is built at random and imported into mmgen with mmgen.interop), the same
token batches and the same dtype. A step is forward, loss, backward and an
AdamW update:
- mmgen: what pretraining's torchtitan step runs: the model as
  ``TitanTransformer`` calls it (``return_hidden=True``, with the packer's
  ``document_ids`` and ``positions`` for rows holding one document each),
  then ``ModalityLoss`` (head fused with the cross-entropy, configured
  z-loss, summed and divided by the valid-token count) on the packer's
  labels (the next token, -100 after the last);
- reference: ``model(input_ids=tokens, labels=tokens).loss`` (its shifted
  cross-entropy, which also masks image-token logits inside the forward).
Neither clips gradients. Tokens are drawn from the text ids: the
reference's logit mask would make image-code targets infinitely unlikely.
Before timing, in float32: the logits must agree, the losses must agree once
mmgen's logits get the reference's image-code mask (and no z-loss), and the
timed hidden-state loss must equal the loss on mmgen's logits. Steps
alternate between the two models and the median step time of each is
reported, as tokens per wall-clock second and per CPU-second of the process
(the latter hardly moves when other jobs share the cores; read it on a busy
machine).

Presets: ``demo`` is mmgen's demo decoder (dim 256, 4 layers, 1042 ids);
``chameleon-vocab`` keeps a small body but Chameleon's 65,536-id vocabulary, so
the output head dominates. Any field can be overridden on the command line.

    .venv/bin/python benchmarks/train_step_vs_hf.py --preset demo
    .venv/bin/python benchmarks/train_step_vs_hf.py --preset demo --compile
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from hf_reference import build_models, require_transformers

import mmgen.train  # noqa: F401  (CPU compat layer before torchtitan loads)
from mmgen.config.schema import ModelConfig, TrainingConfig
from mmgen.data.packing import IGNORE_INDEX
from mmgen.model import Transformer
from mmgen.tokenizers.vocab import Vocab
from mmgen.train.components import ModalityLoss

PRESETS = {
    "demo": dict(dim=256, layers=4, heads=4, kv_heads=4, text=512, codes=512, seq=512, batch=8),
    "chameleon-vocab": dict(dim=256, layers=4, heads=4, kv_heads=4, text=57_342, codes=8192, seq=512, batch=2),
}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="demo")
    for name in ("dim", "layers", "heads", "kv_heads", "text", "codes", "seq", "batch"):
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, type=int, default=None)
    p.add_argument("--swin", action="store_true", help="swin norm placement (Chameleon-34B)")
    p.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    p.add_argument("--steps", type=int, default=6, help="timed steps per model")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per model")
    p.add_argument("--compile", action="store_true", help="also time mmgen with torch.compile per block")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--adamw", choices=["foreach", "fused"], default="foreach",
                   help="AdamW implementation of both models (CPU pretraining uses foreach)")
    args = p.parse_args()
    for key, value in PRESETS[args.preset].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def args_config(args) -> tuple[ModelConfig, Vocab]:
    """The model configuration and vocabulary the command line describes."""
    vocab = Vocab.build(args.text, args.codes, (32, 32))
    cfg = ModelConfig(
        dim=args.dim, n_layers=args.layers, n_heads=args.heads, n_kv_heads=args.kv_heads,
        norm_placement="swin" if args.swin else "pre", max_seq_len=args.seq,
    )
    return cfg, vocab


def packed(batch: torch.Tensor) -> dict[str, torch.Tensor]:
    """What the packer yields for rows that each hold one document: inputs, labels, document ids, positions."""
    B, T = batch.shape
    labels = torch.cat([batch[:, 1:], torch.full((B, 1), IGNORE_INDEX)], dim=1)
    return {"input": batch, "labels": labels, "document_ids": torch.zeros_like(batch),
            "positions": torch.arange(T).expand(B, T)}


def modality_loss(vocab: Vocab, z_loss_weight: float) -> ModalityLoss:
    start, stop = vocab.image_range
    return ModalityLoss.Config(image_start=start, image_stop=stop, z_loss_weight=z_loss_weight).build()


def check_same_function(model, hf, vocab, batch) -> float:
    """Same logits; same loss once mmgen's logits get the reference's image-code mask; timed path = logits path."""
    data = packed(batch)
    valid = (data["labels"] != IGNORE_INDEX).sum()
    with torch.no_grad():
        logits = model(batch, document_ids=data["document_ids"], positions=data["positions"])
        reference = hf.lm_head(hf.model(input_ids=batch).last_hidden_state)
        torch.testing.assert_close(logits, reference, atol=1e-4, rtol=1e-4)
        hidden = model(batch, document_ids=data["document_ids"], positions=data["positions"], return_hidden=True)
        fused = modality_loss(vocab, TrainingConfig().z_loss_weight)(hidden, data["labels"], valid)[0].item()
        plain = modality_loss(vocab, TrainingConfig().z_loss_weight)(logits, data["labels"], valid)[0].item()
        start, stop = vocab.image_range
        logits[..., start:stop] = torch.finfo(logits.dtype).min
        ours = modality_loss(vocab, 0.0)(logits, data["labels"], valid)[0].item()
        ref = hf(input_ids=batch, labels=batch).loss.item()
    if abs(ours - ref) > 1e-4 * max(1.0, abs(ref)):
        raise SystemExit(f"losses differ before timing: mmgen {ours:.6f}, reference {ref:.6f}")
    if abs(fused - plain) > 1e-5 * max(1.0, abs(plain)):
        raise SystemExit(f"mmgen's fused head loss {fused:.6f} differs from its loss on logits {plain:.6f}")
    return ref


def mmgen_step(model, vocab, adamw: str):
    """One of pretraining's steps as a function of a ``packed`` batch: torchtitan's forward
    (TitanTransformer, ``return_hidden``), ModalityLoss over the valid tokens, backward, AdamW."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, **{adamw: True})
    loss_fn = modality_loss(vocab, TrainingConfig().z_loss_weight)

    def step(data):
        pred = model(data["input"], document_ids=data["document_ids"], positions=data["positions"], return_hidden=True)
        loss, _ = loss_fn(pred, data["labels"], (data["labels"] != IGNORE_INDEX).sum())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def reference_step(hf, adamw: str):
    """The reference's step: its own shifted loss, backward, the same AdamW."""
    optimizer = torch.optim.AdamW([p for n, p in hf.named_parameters() if "vqmodel" not in n], lr=1e-4,
                                  **{adamw: True})

    def step(data):
        batch = data["input"]
        loss = hf(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def timed(fn, batch) -> tuple[float, float]:
    """Wall seconds and this process's CPU seconds of one step."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn(batch)
    return time.perf_counter() - wall, time.process_time() - cpu


def alternate(runners: dict, batches: list, warmup: int) -> dict[str, list[tuple[float, float]]]:
    """Each runner's (wall, CPU) seconds per batch after the first ``warmup``; the runners take turns on
    every batch, so a burst of load from other processes falls on all of them alike."""
    times = {name: [] for name in runners}
    for i, batch in enumerate(batches):
        for name, fn in runners.items():
            seconds = timed(fn, batch)
            if i >= warmup:
                times[name].append(seconds)
    return times


def main() -> None:
    args = parse_args()
    require_transformers()
    if args.threads:
        torch.set_num_threads(args.threads)
    import transformers

    transformers.logging.set_verbosity_error()
    cfg, vocab = args_config(args)
    model, hf = build_models(cfg, vocab)
    gen = torch.Generator().manual_seed(1)
    lo, hi = vocab.text_range
    batches = [torch.randint(lo, hi, (args.batch, args.seq), generator=gen) for _ in range(args.warmup + args.steps)]
    ref_loss = check_same_function(model, hf, vocab, batches[0][:, :64])
    batches = [packed(b) for b in batches]  # the data loader's work, outside the timed step

    dtype = getattr(torch, args.dtype)
    model.to(dtype).train()
    hf.to(dtype).train()
    runners = {"mmgen": mmgen_step(model, vocab, args.adamw), "reference": reference_step(hf, args.adamw)}
    if args.compile:
        compiled = Transformer(model.cfg, vocab.size).to(dtype)
        compiled.load_state_dict(model.state_dict())
        for name, block in list(compiled.layers.named_children()):  # as mmgen.train.model_spec does
            compiled.layers.register_module(name, torch.compile(block, fullgraph=True))
        runners["mmgen compiled"] = mmgen_step(compiled.train(), vocab, args.adamw)

    times = alternate(runners, batches, args.warmup)

    tokens = args.batch * args.seq
    params = sum(p.numel() for p in model.parameters())
    print(
        f"preset {args.preset}: dim {args.dim}, layers {args.layers}, heads {args.heads}/{args.kv_heads} kv, "
        f"vocab {vocab.size}, {params / 1e6:.1f}M params, batch {args.batch}x{args.seq}, {args.dtype}, "
        f"{'swin' if args.swin else 'pre'}-norm, {torch.get_num_threads()} threads, "
        f"{args.steps} timed steps, {args.adamw} AdamW; float32 loss check passed ({ref_loss:.4f})"
    )
    # Wall time is what a user waits for; CPU time (the process's, all threads) is what the step costs and
    # hardly moves when other jobs share the cores. Both are medians over the timed steps.
    wall = {name: tokens / statistics.median(w for w, _ in t) for name, t in times.items()}
    cpu = {name: tokens / statistics.median(c for _, c in t) for name, t in times.items()}
    for name in runners:
        print(f"  {name:15s} {wall[name]:8.0f} tokens/s wall   {cpu[name]:8.0f} tokens per CPU-second")
    for name in runners:
        if name != "reference":
            print(f"  ratio {name} / reference: {wall[name] / wall['reference']:.2f}x wall, "
                  f"{cpu[name] / cpu['reference']:.2f}x CPU")

if __name__ == "__main__":
    main()
