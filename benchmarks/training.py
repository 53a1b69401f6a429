"""Sections 1 and 2 of ``benchmarks/run.py``: the matmul peak, training throughput and MFU, and the step
against transformers' Chameleon of the same configuration.

Both models get the same weights, batches and dtype (the one pretraining picks
on this machine: bf16 where the CPU computes it natively, else float32) and
take turns on every batch (``train_step_vs_hf.alternate``). MFU is
torchtitan's FLOP count per token times tokens per CPU-second of this
one-thread process, over the machine's measured one-thread peak of that dtype
(the best seen on this CPU, ``mmgen.device.machine_peak_flops``): CPU time,
unlike wall time, hardly moves when other jobs share the cores.
"""

from __future__ import annotations

import statistics

import torch

from configs import BenchConfig
from figures import Figure
from hf_reference import build_models
from train_step_vs_hf import alternate, check_same_function, mmgen_step, packed, reference_step

from mmgen.device import compute_dtype, machine_peak_flops


def matmul_peaks() -> tuple[dict[torch.dtype, float], list[Figure]]:
    peaks = {dtype: machine_peak_flops(dtype) for dtype in (torch.float32, torch.bfloat16)}
    figures = [Figure("1 peak", f"{dtype} matmul peak, 1 thread", peaks[dtype] / 1e9, "GFLOP/s",
                      note="best of this run and earlier runs on this CPU") for dtype in peaks]
    return peaks, figures


def training_figures(bench: BenchConfig, peaks: dict[torch.dtype, float], *, warmup: int, steps: int) -> list[Figure]:
    """mmgen's pretraining step and the reference's, alternating; tokens/s, MFU and the ratio."""
    import transformers

    transformers.logging.set_verbosity_error()
    model, hf = build_models(bench.model, bench.vocab)
    gen = torch.Generator().manual_seed(1)
    lo, hi = bench.vocab.text_range  # text ids: the reference's loss makes image-code targets impossible
    batches = [torch.randint(lo, hi, (bench.batch_size, bench.seq_len), generator=gen) for _ in range(warmup + steps)]
    check_same_function(model, hf, bench.vocab, batches[0][:1, :64])
    dtype = compute_dtype("auto", "cpu")
    model.to(dtype).train()
    hf.to(dtype).train()
    runners = {"mmgen": mmgen_step(model, bench.vocab, "foreach"), "reference": reference_step(hf, "foreach")}
    times = alternate(runners, [packed(b) for b in batches], warmup)
    tokens = bench.batch_size * bench.seq_len
    wall = {name: tokens / statistics.median(w for w, _ in t) for name, t in times.items()}
    cpu = {name: tokens / statistics.median(c for _, c in t) for name, t in times.items()}
    flops = model.flops_per_token(bench.seq_len)
    params = f"{model.num_params() / 1e6:.1f}M params, {bench.batch_size}x{bench.seq_len} tokens, {dtype}"
    section = "1-2 training"
    return [
        Figure(section, f"{bench.name} ({params}) mmgen tokens/s", wall["mmgen"], "tokens/s",
               "transformers Chameleon", wall["reference"], note="wall"),
        Figure(section, f"{bench.name} mmgen tokens per CPU-second", cpu["mmgen"], "tokens/CPU-s",
               "transformers Chameleon", cpu["reference"]),
        Figure(section, f"{bench.name} MFU", 100 * cpu["mmgen"] * flops / peaks[dtype], "% of peak",
               note=f"{flops / 1e6:.1f} MFLOP/token against the {dtype} peak, CPU time"),
    ]
