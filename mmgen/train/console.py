"""What a training run prints: rank 0's log once, MFU against this machine, no warnings a user cannot act on.

torchtitan logs every line on every rank, computes MFU against a table of GPU
peaks (an A100's 312 TFLOP/s when the device is not in it, after trying
``lspci``), and lets a few warnings through that every CPU run raises and no
user can act on. ``rank_console`` and ``MachineMetrics`` change exactly that;
any other warning still shows.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import torch
from torchtitan.components.metrics import MetricsProcessor
from torchtitan.tools import utils as titan_utils
from torchtitan.tools.logging import init_logger, logger

from mmgen.device import machine_peak_flops
from mmgen.train.cpu_compat import accelerator_present

EXPECTED_LOG_WARNINGS = (
    # torchrun sets this NCCL variable and torchtitan resets it for NCCL's flight recorder; gloo never reads it
    "ENV[TORCH_NCCL_ASYNC_ERROR_HANDLING] = 1 will be overridden to 3",
    # the config keeps torchtitan's default; it matters only with an initial_load_path, which SFT sets
    "initial_load_model_only=True has no effect without an initial_load_path",
)
"""Starts of torchtitan log messages that every CPU run logs and that change nothing."""

EXPECTED_PY_WARNINGS = (
    # DTensor has no offset-based random generator for CPU meshes; torchtitan seeds through it regardless
    r"DTensor random operators may not have complete support on cpu device mesh",
    r"DTensor manual_seed\(\) may not have complete support on cpu device mesh",
)
"""Python ``UserWarning`` messages (regular expressions) raised on every CPU run."""


def _not_expected(record: logging.LogRecord) -> bool:
    return not (record.levelno == logging.WARNING and record.getMessage().startswith(EXPECTED_LOG_WARNINGS))


def rank_console(rank: int) -> None:
    """torchtitan's log format, printed by rank 0; other ranks print their errors only. Call it before building
    torchtitan's config, which logs already.

    Python warnings go through the same log (``py.warnings``), so a warning no filter expects prints once,
    from rank 0, in the log's format.
    """
    init_logger()
    for message in EXPECTED_PY_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=UserWarning)
    logging.captureWarnings(True)
    for handler in logger.handlers:
        handler.addFilter(_not_expected)
        if rank != 0:
            # on the handler, not the logger: records of child loggers (py.warnings) skip ancestors' levels
            handler.setLevel(logging.ERROR)


class MachineMetrics(MetricsProcessor):
    """torchtitan's metrics, with MFU against the peak of the machine the run is on.

    A CPU has no datasheet entry in torchtitan's table, so its peak is measured at start-up: this rank's best
    matrix product in the training dtype, with the threads the rank has (1 per rank in the demo, both ranks
    measuring at once as they then train), or the best earlier measurement of the same kind where higher
    (``mmgen.device.machine_peak_flops``). ``peak_flops`` overrides it (or, on a GPU, the table).
    """

    @dataclass(kw_only=True, slots=True)
    class Config(MetricsProcessor.Config):
        peak_flops: float = 0.0
        """Peak FLOP/s of one rank for MFU; 0: measured at start-up on a CPU, torchtitan's table on a GPU."""
        compute_dtype: str = "float32"
        """The dtype training multiplies in, which the CPU measurement uses."""

    def __init__(self, config: Config, **kwargs):
        peak = config.peak_flops
        if not peak and not accelerator_present():
            peak = machine_peak_flops(getattr(torch, config.compute_dtype))
            logger.info(f"MFU is against {peak / 1e9:,.1f} GFLOP/s, the best {config.compute_dtype} matrix product "
                        f"measured on {torch.get_num_threads()} thread(s) of this CPU (--metrics.peak_flops sets it)")
        if peak:
            # torchtitan asks for the peak twice, here and when the trainer logs it
            titan_utils.get_peak_flops = lambda device_name: peak
        super().__init__(config, **kwargs)
