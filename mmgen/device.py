"""Device and precision choices shared by every stage."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from datetime import timedelta

import torch

from mmgen.cpu_features import cpu_has_amx_bf16, cpu_has_bf16, cpu_model_name


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def generation_device() -> torch.device:
    """The default device for sampling and scoring; a CPU on one thread: one-token decode steps and small
    batched forwards gain nothing from a second thread, which only adds handoff cost."""
    device = default_device()
    if device.type == "cpu":
        torch.set_num_threads(1)
    return device


def import_cpp_extension_quietly() -> None:
    """Import ``torch.utils.cpp_extension`` (inductor's C++ code generation does, at its first compilation)
    without the warning its import logs on a CUDA build of torch where no CUDA runtime is installed, as on the
    CPU machines the registries' default torch wheel lands on: it changes nothing a CPU compilation does."""
    if "torch.utils.cpp_extension" in sys.modules:
        return
    log = logging.getLogger("torch.utils.cpp_extension")

    def not_the_cuda_home_guess(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("No CUDA runtime is found")

    log.addFilter(not_the_cuda_home_guess)
    try:
        import torch.utils.cpp_extension  # noqa: F401
    finally:
        log.removeFilter(not_the_cuda_home_guess)


def torchrun_rank() -> tuple[int, int]:
    """(rank, world size) of this process in a torchrun job; (0, 1) outside one."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def rank_device() -> torch.device:
    """This rank's GPU when there is one, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def cores_per_rank(world: int) -> int:
    """The machine's cores shared among ``world`` ranks."""
    return max(len(os.sched_getaffinity(0)) // world, 1)


def join_ranks(backend: str = "gloo", timeout: timedelta | None = None) -> tuple[int, int, torch.device]:
    """(rank, world size, this rank's device), with the process group joined when there are several ranks,
    and the machine's cores shared among them unless ``OMP_NUM_THREADS`` says how many to use."""
    rank, world = torchrun_rank()
    if world > 1:
        torch.distributed.init_process_group(backend, timeout=timeout)
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(cores_per_rank(world))
    return rank, world, rank_device()


def leave_ranks(world: int) -> None:
    """Wait for every rank, then leave the process group (nothing outside a multi-rank job)."""
    if world > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def bf16_supported(device: torch.device | str) -> bool:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_bf16()


def matmul_peak_flops(dtype: torch.dtype, *, sizes: tuple[int, ...] = (256, 512, 1024), seconds: float = 0.3) -> float:
    """FLOP/s of this process's best square matrix product in ``dtype`` on the CPU, with torch's threads.

    The denominator of MFU on a CPU, which has no datasheet figure torchtitan could look up. The best over
    a few sizes (which size a CPU's kernels like best varies with its caches) and over repeated products, not
    a mean: a busy neighbour on a shared core slows some repetitions, never speeds one up. Costs about
    ``seconds``; a larger size is skipped once one product would not fit its share (bf16 emulated on an AVX2
    CPU runs ~100x below fp32).
    """
    best_rate = 0.0
    share = seconds / len(sizes)
    for size in sizes:
        if best_rate and 2 * size**3 / best_rate > share:
            break
        # its own generator: drawing from the global one would change the model's initial weights
        generator = torch.Generator().manual_seed(0)
        a = torch.randn(size, size, generator=generator).to(dtype)
        b = torch.randn(size, size, generator=generator).to(dtype)
        out = torch.mm(a, b)  # warm-up: thread pool start, kernel choice, packing buffers
        deadline = time.perf_counter() + share
        while True:
            start = time.perf_counter()
            torch.mm(a, b, out=out)
            best_rate = max(best_rate, 2 * size**3 / (time.perf_counter() - start))
            if time.perf_counter() >= deadline:
                break
    return best_rate


def peak_cache_path() -> str:
    return os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "mmgen", "matmul_peak.json")


def machine_peak_flops(dtype: torch.dtype) -> float:
    """``matmul_peak_flops`` now or, when higher, the best earlier measurement on the same CPU, dtype, threads and torch.

    A start-up on a busy machine measures low, and MFU would then read high; the best figure seen is the closer one
    to the machine's peak. Kept in ``peak_cache_path()``; a cache that cannot be read or written is skipped.
    """
    from mmgen.files import write_atomic

    key = f"{cpu_model_name() or 'cpu'} | {dtype} | {torch.get_num_threads()} threads | torch {torch.__version__}"
    path = peak_cache_path()
    try:
        with open(path) as f:
            known = json.load(f)
    except (OSError, ValueError):
        known = {}
    if not isinstance(known, dict):
        known = {}
    previous = known.get(key)
    previous = float(previous) if isinstance(previous, (int, float)) else 0.0
    best = max(matmul_peak_flops(dtype), previous)
    if best != previous:
        try:
            write_atomic(path, json.dumps({**known, key: best}, indent=1, sort_keys=True))
        except OSError:
            pass
    return best


def machine_description() -> dict:
    """What a figure was measured on: CPU model, cores, whether bf16 is native (and on AMX tiles), GPU if any,
    torch version.

    The CPU families these machines come in train the demo at very different speeds (fp32 on AVX2 vs
    bf16 on AVX512-BF16 or AMX), so every recorded figure carries this.
    """
    return {
        "cpu": cpu_model_name(),
        "cores": len(os.sched_getaffinity(0)),
        "cpu_bf16": cpu_has_bf16(),
        "cpu_amx_bf16": cpu_has_amx_bf16(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch": torch.__version__,
    }


def compute_dtype(setting: str, device: torch.device | str) -> torch.dtype:
    """Resolve a precision setting ('auto', 'bfloat16', 'float32') for a device."""
    if setting == "auto":
        return torch.bfloat16 if bf16_supported(device) else torch.float32
    return {"bfloat16": torch.bfloat16, "float32": torch.float32}[setting]
