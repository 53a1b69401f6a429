"""mmgen's performance in one run on the machine at hand: every figure next to a baseline measured in the same run.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/run.py [--quick] [--only 1,3] [--no-docs] [--compile] [--run DIR]

Sections (the issue-17 list):
1. bf16 and float32 matmul peak; training tokens/s and MFU against that peak, demo config and a ~42 M one;
2. the training step against transformers' Chameleon of the same configuration (same weights, batches, dtype);
3. decode tokens/s of the sampler against transformers' ``generate`` (greedy, KV cache on both; batch 1 and 8;
   float32, and bf16 as well where the CPU computes it natively);
4. seconds per generated image with classifier-free guidance, at the demo's 8 x 8 codes and at 1,024 codes;
   speculative Jacobi decoding against plain sampling: forward passes and seconds per image, and text-to-image
   accuracy of both on validation scenes when ``--run`` names a trained demo run (default ``outputs/demo``);
5. generative classification images/s for 1, 10 and 100 labels, with and without prefix reuse;
6. read + encode and loader throughput against the trainer's demand; FAISS queries/s and recall.

Everything runs on one thread (torch and FAISS share it), as each rank of the demo's pretraining and
the generation CLIs do. Ratios are value / baseline, inverted for seconds, so above 1 always
means mmgen (or the option) is faster. The results go to the console and, between markers, to
docs/BENCHMARKS.md with the machine they were measured on (CPU model, cores, ISA flags, torch,
date, load average): a rerun replaces that section. On a machine that other jobs share the absolute
figures drop, and the load average says how much; the ratios hold better, since both sides of each
are measured minutes apart. Full run about 10-15 min on 2 cores, ``--quick`` about 3.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from configs import demo_config, medium_config  # noqa: E402
from figures import Figure, number, show  # noqa: E402
from hf_reference import require_transformers  # noqa: E402

from mmgen.cpu_features import cpu_model_name  # noqa: E402
from mmgen.device import compute_dtype  # noqa: E402
from mmgen.files import write_atomic  # noqa: E402
from mmgen.tokenizers.vocab import Vocab  # noqa: E402

BEGIN = "<!-- benchmarks/run.py: begin (generated, replaced on every run) -->"
END = "<!-- benchmarks/run.py: end -->"
DEFAULT_RUN = Path(__file__).resolve().parents[1] / "outputs" / "demo"
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


@dataclasses.dataclass(frozen=True)
class Budget:
    """How much of everything one run measures: ``--quick`` or full."""

    train_warmup: int
    train_steps: int
    decode_tokens: int
    repeats: int
    decode_rounds: int
    """Rounds in which the decoders take turns, each given its best: the compiled step's rate on a 2-core host
    swings up to 1.9x from one call to the next, so a best of two can catch one side only in a slow moment."""
    classify_images: int
    documents: int
    loader_seconds: float
    faiss_vectors: int
    faiss_kinds: tuple[str, ...]
    jacobi_images: int
    """Prompts sampled one at a time by plain and by Jacobi decoding."""
    jacobi_accuracy_prompts: int
    """Validation scenes whose text-to-image accuracy both samplers are scored on (trained run only)."""


FULL = Budget(train_warmup=1, train_steps=3, decode_tokens=64, repeats=2, decode_rounds=6, classify_images=8,
              documents=200, loader_seconds=3.0, faiss_vectors=100_000, faiss_kinds=("ivfpq", "hnsw"), jacobi_images=8,
              jacobi_accuracy_prompts=200)
QUICK = Budget(train_warmup=1, train_steps=1, decode_tokens=16, repeats=1, decode_rounds=1, classify_images=2,
               documents=30, loader_seconds=1.0, faiss_vectors=20_000, faiss_kinds=("hnsw",), jacobi_images=2,
               jacobi_accuracy_prompts=16)


def machine() -> dict[str, str]:
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), []))
    except OSError:
        flags = set()
    import transformers

    return {
        "cpu": cpu_model_name() or "unknown CPU",
        "cores": str(len(os.sched_getaffinity(0))),
        "isa": ", ".join(f for f in ISA_FLAGS if f in flags) or "none of " + ", ".join(ISA_FLAGS),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "none",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def load_average() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def measure(sections: set[str], budget: Budget, *, compile: bool, run_dir: str | None = None,
            jacobi_window: int = 8, log=print) -> list[Figure]:
    from training import matmul_peaks, training_figures

    figures: list[Figure] = []

    def add(new: list[Figure]) -> None:
        for figure in new:
            log(show(figure))
        figures.extend(new)

    demo, medium = demo_config(), medium_config()
    if budget is QUICK:  # the same shapes at a size that fits the quick budget
        medium = dataclasses.replace(medium, seq_len=256, batch_size=1)
    demand = 0.0
    if sections & {"1", "2", "6"}:
        log("== 1-2: matmul peak, training throughput and MFU, step against transformers' Chameleon")
        peaks, peak_figures = matmul_peaks()
        add(peak_figures)
        for bench in (demo, medium) if sections & {"1", "2"} else (demo,):  # section 6 alone: the demand only
            wall, cpu, mfu = training_figures(bench, peaks, warmup=budget.train_warmup, steps=budget.train_steps)
            add([wall, cpu, mfu])
            if bench is demo:
                # what the demo's ranks, one per core, consume together; per CPU-second, which is what a rank
                # would consume on a core of its own, so other jobs on the cores do not lower the demand
                demand = cpu.value * len(os.sched_getaffinity(0))
    if "3" in sections:
        from decode import decode_figures

        log("== 3: decode tokens/s against transformers' generate")
        # float32, and where the CPU computes bf16 natively (pretraining then trains in it) both decoders in bf16
        for dtype in dict.fromkeys((torch.float32, compute_dtype("auto", "cpu"))):
            for bench in (demo, medium):
                for batch in (1, 8):
                    add(decode_figures(bench, batch, budget.decode_tokens, budget.decode_rounds, compile=compile,
                                       dtype=dtype))
    if "4" in sections:
        from decode import image_figures

        log("== 4: seconds per image with classifier-free guidance")
        add(image_figures(demo, 3.0, budget.repeats))
        # Chameleon's 1,024 codes with the ~42 M model, one timed image per setting; --quick: the demo's
        # model at 16 x 16 codes, which fits its budget
        big = medium if budget is FULL else dataclasses.replace(demo, vocab=Vocab.build(8192, 8192, (16, 16)))
        add(image_figures(big, 3.0, 0))
        from parallel_decoding import jacobi_figures

        log(f"== 4: speculative Jacobi decoding against plain sampling ({run_dir or 'no trained run: random weights'})")
        add(jacobi_figures(demo, run_dir, window=jacobi_window, images=budget.jacobi_images,
                           accuracy_prompts=budget.jacobi_accuracy_prompts))
        if compile:
            add(jacobi_figures(demo, run_dir, window=jacobi_window, images=budget.jacobi_images,
                               accuracy_prompts=0, compile=True))
    if "5" in sections:
        from generation import classification_figures

        from mmgen.model import Transformer

        log("== 5: generative classification")
        torch.manual_seed(0)
        model = Transformer(demo.model, demo.vocab.size).eval()
        model.init_weights()
        with torch.inference_mode():
            add(classification_figures(model, demo.vocab, (1, 10, 100), budget.classify_images, budget.repeats))
    if "6" in sections:
        from data_pipeline import pipeline_figures
        from faiss_bank import bank_figures

        log("== 6: read + encode and loader against the trainer's demand; FAISS")
        add(pipeline_figures(None, budget.documents, budget.loader_seconds, demand, log=log))
        add(bank_figures(budget.faiss_vectors, 64, 500, list(budget.faiss_kinds), log=log))
    return figures


def markdown(figures: list[Figure], stamp: dict[str, str], *, command: str, minutes: float,
             loads: tuple[str, str]) -> str:
    lines = [
        BEGIN,
        "## Latest `benchmarks/run.py` run (generated)",
        "",
        f"**Machine:** {stamp['cpu']}, {stamp['cores']} cores, ISA flags: {stamp['isa']}; GPU: {stamp['gpu']}; "
        f"torch {stamp['torch']}, transformers {stamp['transformers']}; torch on 1 thread. "
        f"**Run:** {stamp['date']}, {minutes:.1f} min; load average (1/5/15 min) {loads[0]} at the start, "
        f"{loads[1]} at the end. A load average above the core count means other jobs shared the cores: "
        "absolute figures are then low, ratios less so.",
        "",
        "| section | figure | value | baseline | ratio | note |",
        "|---|---|---|---|---|---|",
    ]
    for f in figures:
        baseline = f"{f.baseline} {number(f.baseline_value)}" if f.baseline else ""
        ratio = f"{f.ratio:.2f}×" if f.ratio is not None else ""
        cells = [f.section, f.what, f"{number(f.value)} {f.unit}", baseline, ratio, f.note]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    lines += ["", f"Command: `PYTHONPATH=$PWD .venv/bin/python {command}`", END]
    return "\n".join(lines)


def replace_section(doc: str, section: str) -> str:
    """``doc`` with the text between the markers replaced by ``section``, or ``section`` put before the
    first second-level heading when there are no markers yet."""
    if BEGIN in doc and END in doc:
        head, rest = doc.split(BEGIN, 1)
        return head + section + rest.split(END, 1)[1]
    at = doc.find("\n## ")
    at = len(doc) if at < 0 else at + 1
    return doc[:at] + section + "\n\n" + doc[at:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps, tokens and items (about 3 min)")
    parser.add_argument("--only", default="1,2,3,4,5,6", help="comma-separated sections to run")
    parser.add_argument("--compile", action="store_true",
                        help="also time the sampler with its whole decode step compiled as one graph, both "
                             "decoders at batch 1 and 8, and Jacobi decoding against plain sampling both compiled "
                             "(each compilation takes minutes on a CPU; reported apart, not counted in the rate)")
    parser.add_argument("--run", default=str(DEFAULT_RUN),
                        help="a trained demo run folder for section 4's Jacobi decoding (its newest pretraining "
                             "checkpoint; default outputs/demo); without one, a random demo-sized model")
    parser.add_argument("--jacobi-window", type=int, default=8, help="codes guessed ahead per forward pass")
    parser.add_argument("--docs", default=str(Path(__file__).resolve().parents[1] / "docs" / "BENCHMARKS.md"))
    parser.add_argument("--no-docs", action="store_true", help="print only; leave docs/BENCHMARKS.md alone")
    args = parser.parse_args()
    sections = {s.strip() for s in args.only.split(",") if s.strip()}
    unknown = sections - set("123456")
    if unknown:
        raise SystemExit(f"error: unknown section(s) {', '.join(sorted(unknown))}; sections are 1-6")
    if not args.no_docs and not os.path.exists(args.docs):
        raise SystemExit(f"error: {args.docs} does not exist (give --docs PATH or --no-docs)")
    require_transformers()
    torch.set_num_threads(1)
    stamp, start_load, start = machine(), load_average(), time.perf_counter()
    print(f"{stamp['cpu']}, {stamp['cores']} cores ({stamp['isa']}), torch {stamp['torch']}, load {start_load}")
    run_dir = args.run if os.path.exists(os.path.join(args.run, "pretrain", "model.json")) else None
    if run_dir is None and args.run != str(DEFAULT_RUN):
        raise SystemExit(f"error: {args.run} holds no trained run (no pretrain/model.json)")
    figures = measure(sections, QUICK if args.quick else FULL, compile=args.compile, run_dir=run_dir,
                      jacobi_window=args.jacobi_window)
    minutes, end_load = (time.perf_counter() - start) / 60, load_average()
    print(f"done in {minutes:.1f} min; load average {start_load} at the start, {end_load} at the end")
    if not args.no_docs:
        with open(args.docs) as f:
            doc = f.read()
        command = " ".join(["benchmarks/run.py", *sys.argv[1:]])
        section = markdown(figures, stamp, command=command, minutes=minutes, loads=(start_load, end_load))
        write_atomic(args.docs, replace_section(doc, section))
        print(f"wrote the results into {args.docs}")


if __name__ == "__main__":
    main()
