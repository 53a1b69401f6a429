"""The GPU checks of issue 17, one command on one GPU (no torchtitan needed), about 6-8 minutes on an H200:

    python benchmarks/gpu.py [--json FILE] [--only 1,3] [--tiny]

(``--tiny``: every part at toy sizes, on the CPU when there is no GPU: a check of the script, not a figure.)

1. the GPU's bf16 and fp32 matrix-multiply peak (measured: 8192³ products);
2. FlexAttention against SDPA on a packed batch (documents of random lengths in each row): the same weights give
   the same logits and gradients within float32 tolerance, and the bf16 training step of each is timed;
3. a bf16 training step of a ~1.2 B-parameter decoder (autocast over float32 master weights, fused AdamW,
   each block compiled as torchtitan compiles them, FlexAttention on packed documents): tokens/s and MFU against
   the measured bf16 peak, by torchtitan's FLOP count;
4. decode tokens/s of the sampler (eager, and its whole step compiled) against transformers' ``generate`` on the
   same bf16 weights (``--decode-dtype float32``: float32, to check the greedy tokens agree), batch 1 and 8;
5. seconds per 1,024-code image (32 × 32 grid) with classifier-free guidance, eager and compiled.
Each part runs on its own: one that fails prints its error and the rest still run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
import traceback

import torch
from hf_reference import build_models

from mmgen.config.schema import ModelConfig
from mmgen.generation.sampler import SamplingParams, sample
from mmgen.model import Transformer
from mmgen.model.loss import per_token_loss
from mmgen.tokenizers.vocab import Vocab

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
TINY = False
"""``--tiny``: toy sizes everywhere (set by ``main``)."""
FLEX = "flex" if DEVICE.type == "cuda" else "sdpa"
"""FlexAttention has no backward on the CPU: there ``--tiny`` runs SDPA in its place (a check of the script)."""


def synchronize() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def mean_seconds(fn, repeats: int, warmup: int = 1) -> float:
    """Mean seconds of ``fn`` over ``repeats`` calls after ``warmup`` ones (the GPU drained before and after)."""
    for _ in range(warmup):
        fn()
    synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    synchronize()
    return (time.perf_counter() - start) / repeats


def matmul_peaks() -> dict:
    n, out = (256 if TINY else 8192), {}
    for dtype in (torch.bfloat16, torch.float32):
        a, b = (torch.randn(n, n, device=DEVICE, dtype=dtype) for _ in range(2))
        seconds = mean_seconds(lambda: a @ b, repeats=20, warmup=3)
        out[str(dtype).removeprefix("torch.")] = 2 * n**3 / seconds
    return out


def packed_batch(vocab: Vocab, batch: int, seq_len: int, generator: torch.Generator):
    """Random tokens in rows of packed documents (lengths 32-1024), their next-token labels and document ids."""
    tokens = torch.randint(vocab.text_range[0], vocab.size - 1, (batch, seq_len + 1), generator=generator)
    ids = torch.zeros(batch, seq_len, dtype=torch.long)
    for row in range(batch):
        at, doc = 0, 0
        while at < seq_len:
            length = int(torch.randint(32, 1025, (1,), generator=generator))
            ids[row, at:at + length] = doc
            at, doc = at + length, doc + 1
    labels = tokens[:, 1:].clone()
    labels[:, :-1][ids[:, 1:] != ids[:, :-1]] = -100  # no target across a document boundary
    return tokens[:, :-1].to(DEVICE), labels.to(DEVICE), ids.to(DEVICE)


def loss_of(model, tokens, labels, ids):
    logits = model(tokens, document_ids=ids)
    return per_token_loss(logits.float(), labels).sum() / (labels != -100).sum()


def flex_against_sdpa() -> dict:
    cfg = ModelConfig(dim=64 if TINY else 1024, n_layers=2 if TINY else 8, n_heads=16, max_seq_len=2048)
    vocab = Vocab.build(8192, 8192, (32, 32))
    torch.manual_seed(0)
    sdpa = Transformer(cfg, vocab.size).to(DEVICE)
    sdpa.init_weights()
    flex = Transformer(dataclasses.replace(cfg, attention_backend=FLEX), vocab.size).to(DEVICE)
    flex.load_state_dict(sdpa.state_dict())
    rows, seq_len = (1, 256) if TINY else (4, 2048)
    batch = packed_batch(vocab, rows, seq_len, torch.Generator().manual_seed(0))
    out = {"config": f"dim {cfg.dim}, {cfg.n_layers} layers, {cfg.n_heads} heads, vocabulary {vocab.size:,}; "
                     f"batch {rows} x {seq_len:,} tokens of packed documents"}
    tf32, torch.backends.cuda.matmul.allow_tf32 = torch.backends.cuda.matmul.allow_tf32, False  # a float32 check
    results = {}
    for name, model in (("sdpa", sdpa), ("flex", flex)):
        model.zero_grad()
        loss = loss_of(model, *batch)
        loss.backward()
        with torch.no_grad():
            logits = model(batch[0], document_ids=batch[2])
        results[name] = (loss.item(), logits, model.layers["0"].attention.wq.weight.grad.clone())
    (loss_s, logits_s, grad_s), (loss_f, logits_f, grad_f) = results["sdpa"], results["flex"]
    out["float32 loss sdpa / flex"] = [loss_s, loss_f]
    out["float32 logits max abs difference / max abs"] = [(logits_s - logits_f).abs().max().item(),
                                                          logits_s.abs().max().item()]
    out["float32 layer-0 wq gradient relative difference"] = ((grad_s - grad_f).norm() / grad_s.norm()).item()
    out["equal within tolerance"] = bool(torch.allclose(logits_s, logits_f, atol=2e-3, rtol=2e-3))
    torch.backends.cuda.matmul.allow_tf32 = tf32
    tokens = batch[0].numel()
    for name, model in (("sdpa", sdpa), ("flex", flex)):
        def step():
            with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
                loss = loss_of(model, *batch)
            loss.backward()
        out[f"bf16 eager fwd+bwd tokens/s, {name}"] = tokens / mean_seconds(step, repeats=2 if TINY else 10, warmup=1 if TINY else 2)
    return out


def billion_config() -> tuple[ModelConfig, Vocab]:
    """dim 2,048, 20 layers, 16 heads, Chameleon's 65,536-entry vocabulary (8,192 image codes, 32 × 32 grid)."""
    if TINY:
        return ModelConfig(dim=64, n_layers=2, n_heads=4, max_seq_len=2048), Vocab.build(512, 512, (32, 32))
    return ModelConfig(dim=2048, n_layers=20, n_heads=16, max_seq_len=4096), Vocab.build(57344, 8192, (32, 32))


def training_step(peak_bf16: float) -> dict:
    cfg, vocab = billion_config()
    cfg = dataclasses.replace(cfg, attention_backend=FLEX)
    torch.manual_seed(0)
    model = Transformer(cfg, vocab.size).to(DEVICE)
    model.init_weights()
    for block in model.layers.values():
        block.compile()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    batch_size, seq_len = (1, 512) if TINY else (4, 4096)
    generator = torch.Generator().manual_seed(1)
    batches = [packed_batch(vocab, batch_size, seq_len, generator) for _ in range(3)]
    state = {"i": 0}

    def step():
        tokens, labels, ids = batches[state["i"] % len(batches)]
        state["i"] += 1
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
            loss = loss_of(model, tokens, labels, ids)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    start = time.perf_counter()
    step()
    synchronize()
    first = time.perf_counter() - start
    if DEVICE.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds = mean_seconds(step, repeats=10, warmup=2)
    tokens_per_s = batch_size * seq_len / seconds
    flops = model.flops_per_token(seq_len)
    return {"parameters": model.num_params(), "batch": f"{batch_size} x {seq_len} tokens of packed documents",
            "first step (compilation) s": first, "step s": seconds, "tokens/s": tokens_per_s,
            "MFLOP per token (torchtitan's count)": flops / 1e6,
            "TFLOP/s": tokens_per_s * flops / 1e12, "MFU vs measured bf16 peak": tokens_per_s * flops / peak_bf16,
            "peak memory GiB": torch.cuda.max_memory_allocated() / 2**30 if DEVICE.type == "cuda" else None}


def decode_against_generate(dtype: torch.dtype = torch.bfloat16) -> dict:
    import transformers

    transformers.logging.set_verbosity_error()
    cfg, vocab = billion_config()
    model, hf = build_models(cfg, vocab)
    model, hf = model.to(DEVICE, dtype).eval(), hf.to(DEVICE, dtype).eval()
    # float32 without TF32, to check that both decoders compute one function: a random model's logits are nearly
    # flat, so in bfloat16 rounding alone decides many greedy choices
    torch.backends.cuda.matmul.allow_tf32 = dtype != torch.float32
    out, new = {"dtype": str(dtype)}, 16 if TINY else 128
    params = SamplingParams(max_new_tokens=new, temperature=0.0, max_images=0, eos_stops=False)
    for batch in (1, 8):
        lo = vocab.text_range[0]
        prompts = [[vocab.bos, *range(lo + 1 + r, lo + 12 + r)] for r in range(batch)]
        ids = torch.tensor(prompts, device=DEVICE)
        runners = {
            "generate": lambda: hf.generate(input_ids=ids, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                                            use_cache=True, pad_token_id=vocab.pad)[:, ids.shape[1]:].tolist(),
            "sampler eager": lambda: sample(model, vocab, prompts, params),
            "sampler compiled": lambda: sample(model, vocab, prompts, params, compile=True),
        }
        results = {}
        for name, fn in runners.items():
            try:
                start = time.perf_counter()
                with torch.inference_mode():
                    results[name] = fn()
                synchronize()
                first = time.perf_counter() - start
                best = float("inf")
                for _ in range(3):
                    start = time.perf_counter()
                    with torch.inference_mode():
                        results[name] = fn()
                    synchronize()
                    best = min(best, time.perf_counter() - start)
                out[f"batch {batch} {name} tokens/s"] = batch * new / best
                out[f"batch {batch} {name} first call s"] = first
            except Exception as error:  # noqa: BLE001  (one runner's failure must not hide the others)
                out[f"batch {batch} {name} error"] = repr(error)[:300]
        for name in ("sampler eager", "sampler compiled"):
            if name in results and "generate" in results:
                same = sum(a == b for x, y in zip(results[name], results["generate"]) for a, b in zip(x, y))
                out[f"batch {batch} {name} tokens identical to generate's"] = same / (batch * new)
    return out


def image_seconds() -> dict:
    cfg, vocab = billion_config()
    torch.manual_seed(0)
    model = Transformer(cfg, vocab.size).to(DEVICE)
    model.init_weights()
    model = model.to(torch.bfloat16).eval()
    lo = vocab.text_range[0]
    prompts = [[vocab.bos, *range(lo + 1, lo + 12)]]
    h, w = vocab.grid
    guided = SamplingParams(max_new_tokens=h * w + 2, max_images=1, force_image=True, cfg_scale=3.0)
    out = {}
    for name, kwargs in (("eager", {}), ("compiled", {"compile": True})):
        for run in ("first image (compilation)", f"one {h * w:,}-code image, CFG 3"):
            start = time.perf_counter()
            with torch.inference_mode():
                sample(model, vocab, prompts, guided, **kwargs)
            synchronize()
            out[f"{name} s, {run}"] = time.perf_counter() - start
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", default="", help="also write the figures to this file")
    parser.add_argument("--only", default="1,2,3,4,5", help="parts to run, e.g. 1,3")
    parser.add_argument("--tiny", action="store_true", help="toy sizes: check the script on any machine")
    parser.add_argument("--decode-dtype", default="bfloat16", choices=("bfloat16", "float32"),
                        help="weights of part 4 (float32: check that the sampler's greedy tokens are generate's)")
    args = parser.parse_args()
    global TINY
    TINY = args.tiny
    if DEVICE.type != "cuda" and not TINY:
        raise SystemExit("error: benchmarks/gpu.py needs a CUDA GPU (or --tiny); the CPU's figures come from "
                         "benchmarks/run.py")
    parts = set(args.only.split(","))
    name = torch.cuda.get_device_name() if DEVICE.type == "cuda" else "cpu (--tiny)"
    report = {"device": name, "torch": torch.__version__,
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    print(json.dumps(report), flush=True)
    peaks = matmul_peaks()
    report["1 matmul peak FLOP/s"] = peaks
    print("1", json.dumps(peaks), flush=True)
    # the slowest to set up last (transformers' 1.2 B Chameleon is built on the CPU), so a time limit cuts it first
    steps = [("2 flex against sdpa", flex_against_sdpa),
             ("3 training step", lambda: training_step(peaks["bfloat16"])),
             ("5 image seconds", image_seconds), ("4 decode against generate", lambda: decode_against_generate(getattr(torch, args.decode_dtype)))]
    for part_name, part in steps:
        if part_name[0] not in parts:
            continue
        start = time.perf_counter()
        try:
            report[part_name] = part()
        except Exception:  # noqa: BLE001  (one part's failure must not hide the others' figures)
            report[part_name] = {"error": traceback.format_exc()[-1500:]}
        report[part_name]["part seconds"] = time.perf_counter() - start
        print(part_name, json.dumps(report[part_name], default=str), flush=True)
        if DEVICE.type == "cuda":
            torch.cuda.empty_cache()
        if args.json:  # after every part: a run cut short keeps what it measured
            with open(args.json + ".tmp", "w") as f:
                json.dump(report, f, indent=1, default=str)
            os.replace(args.json + ".tmp", args.json)


if __name__ == "__main__":
    main()
