"""The training console: one rank's log, MFU against this machine's peak, resident memory, no expected warnings."""

import logging
import time
import warnings

import pytest
import torch

import mmgen.train  # noqa: F401  (CPU compat before torchtitan)
from mmgen import device
from mmgen.device import machine_peak_flops, matmul_peak_flops
from mmgen.train.console import MachineMetrics, rank_console
from mmgen.train.cpu_compat import resident_memory_stats


def test_matmul_peak_is_measured_within_its_budget_even_for_a_slow_dtype():
    for dtype in (torch.float32, torch.bfloat16):
        start = time.perf_counter()
        peak = matmul_peak_flops(dtype, seconds=0.2)
        elapsed = time.perf_counter() - start
        assert 1e7 < peak < 1e14, (dtype, peak)
        # one warm-up and one product per size at most beyond the budget (emulated bf16 is ~100x slower)
        assert elapsed < 3.0, (dtype, elapsed)


def test_the_machine_peak_is_the_best_measurement_of_its_kind(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    measured = iter([50e9, 80e9, 60e9, 70e9])
    monkeypatch.setattr(device, "matmul_peak_flops", lambda dtype: next(measured))
    assert machine_peak_flops(torch.float32) == 50e9
    assert machine_peak_flops(torch.float32) == 80e9
    assert machine_peak_flops(torch.float32) == 80e9  # a busy start-up (60) keeps the best seen
    assert machine_peak_flops(torch.bfloat16) == 70e9  # another dtype is another peak
    (tmp_path / "mmgen" / "matmul_peak.json").write_text("not json")
    monkeypatch.setattr(device, "matmul_peak_flops", lambda dtype: 40e9)
    assert machine_peak_flops(torch.float32) == 40e9  # a broken cache is measured over


def test_cpu_memory_is_the_resident_set():
    before = resident_memory_stats()
    blob = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
    after = resident_memory_stats()
    assert after["active_bytes.all.peak"] - before["active_bytes.all.peak"] >= 60 * 2**20
    assert after["reserved_bytes.all.peak"] >= after["active_bytes.all.peak"]  # the peak is never below now
    assert torch.cpu.memory_stats().keys() == before.keys()  # what torchtitan's monitor reads
    del blob


@pytest.fixture
def restore_logging():
    """torchtitan's root logger and the warning filters as they were before the test."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    with warnings.catch_warnings():
        yield
    logging.captureWarnings(False)
    root.handlers[:], root.level = saved


def console_lines(capsys) -> list[str]:
    """What the console printed, without torchtitan's '[titan] time - logger - ' prefix."""
    return [line.split(" - ", 2)[-1] for line in capsys.readouterr().out.splitlines()]


def test_rank_zero_drops_only_the_expected_warnings(restore_logging, capsys):
    rank_console(0)
    log = logging.getLogger()
    log.warning("initial_load_model_only=True has no effect without an initial_load_path.")
    log.warning("ENV[TORCH_NCCL_ASYNC_ERROR_HANDLING] = 1 will be overridden to 3 based on job config")
    log.warning("ENV[TORCH_NCCL_DUMP_ON_TIMEOUT] = 0 will be overridden to 1 based on job config")
    log.info("step:  1  loss: 6.1")
    warnings.warn("DTensor random operators may not have complete support on cpu device mesh", UserWarning)
    warnings.warn("DTensor manual_seed() may not have complete support on cpu device mesh", UserWarning)
    warnings.warn("something a user should see", UserWarning)
    lines = console_lines(capsys)
    assert lines[:2] == ["WARNING - ENV[TORCH_NCCL_DUMP_ON_TIMEOUT] = 0 will be overridden to 1 based on job config",
                         "INFO - step:  1  loss: 6.1"]
    assert any("something a user should see" in line for line in lines[2:])  # in the log's format, once
    assert not any("DTensor" in line or "initial_load_model_only" in line for line in lines)


def test_other_ranks_print_errors_only(restore_logging, capsys):
    rank_console(1)
    log = logging.getLogger()
    log.info("step:  1  loss: 6.1")
    log.warning("a warning rank 0 prints as well")
    warnings.warn("a python warning rank 0 prints as well", UserWarning)
    log.error("rank 1 failed")
    assert console_lines(capsys) == ["ERROR - rank 1 failed"]


def test_mfu_is_against_the_configured_or_measured_peak_never_an_a100(monkeypatch, restore_logging, capsys, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    from torchtitan.tools import utils as titan_utils

    rank_console(0)
    # the trainer asks torchtitan's lookup again after building the metrics: both must give the same peak
    monkeypatch.setattr(titan_utils, "get_peak_flops", titan_utils.get_peak_flops)
    metrics = MachineMetrics(MachineMetrics.Config(peak_flops=2.5e10), parallel_dims=None)
    assert metrics.gpu_peak_flops == 2.5e10 == titan_utils.get_peak_flops("AMD EPYC")

    measured = MachineMetrics(MachineMetrics.Config(compute_dtype="float32"), parallel_dims=None).gpu_peak_flops
    assert 1e8 < measured < 1e13 and measured != 312e12
    assert titan_utils.get_peak_flops("AMD EPYC") == measured
    lines = capsys.readouterr().out.splitlines()
    assert not any("lspci" in line or "A100" in line for line in lines), lines
    assert any(f"{measured / 1e9:,.1f} GFLOP/s" in line for line in lines), lines


def test_allocator_settings_leave_the_users_own_and_apply_to_glibc_cpu_runs_only(monkeypatch):
    from mmgen import allocator

    monkeypatch.setattr(allocator, "uses_glibc", lambda: True)
    added = allocator.training_allocator_env({"MALLOC_TOP_PAD_": "0", "PATH": "/bin"})
    assert added == {"MALLOC_MMAP_THRESHOLD_": "17179869184", "MALLOC_TRIM_THRESHOLD_": "17179869184"}
    assert allocator.training_allocator_env({}, cpu=False) == {}
    monkeypatch.setattr(allocator, "uses_glibc", lambda: False)  # musl, macOS: other variables, other meaning
    assert allocator.training_allocator_env({}) == {}


def test_a_compiled_samples_cpp_extension_import_drops_only_the_cuda_home_guess():
    """torch's C++ extension module warns at import on a CUDA build of torch without a CUDA runtime; the sampler's
    compilation imports it without that line, and another warning of the module still shows."""
    import subprocess
    import sys

    def stderr_of(code: str) -> str:
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stderr

    plain = stderr_of("import torch.utils.cpp_extension")
    if "No CUDA runtime is found" not in plain:
        pytest.skip("this torch build logs no CUDA guess at import (a CPU wheel, or a CUDA runtime is present)")
    quiet = stderr_of("import logging\nfrom mmgen.device import import_cpp_extension_quietly\n"
                      "import_cpp_extension_quietly()\n"
                      "logging.getLogger('torch.utils.cpp_extension').warning('another warning')")
    assert "No CUDA runtime is found" not in quiet and "another warning" in quiet
