"""Start a local multi-process job the way torchrun does, from inside a CLI.

A CLI checks its config and inputs first, so a user mistake is one line here
rather than one line per rank plus torchrun's failure report. On a CPU the
ranks start with mmgen's glibc malloc settings (``mmgen.allocator``) unless
the user set them.
"""

from __future__ import annotations

import os

from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import get_args_parser, run

from mmgen.allocator import training_allocator_env
from mmgen.train.cpu_compat import accelerator_present


def launch_local(script: str, argv: list[str], *, processes: int) -> None:
    os.environ.update(training_allocator_env(cpu=not accelerator_present()))  # the ranks inherit this environment
    args = get_args_parser().parse_args(["--standalone", f"--nproc_per_node={processes}", script, *argv])
    try:
        run(args)
    except ChildFailedError as err:
        ranks = ", ".join(f"rank {r} (exit code {f.exitcode})" for r, f in sorted(err.failures.items()))
        raise SystemExit(f"error: {script} failed on {ranks}; its own messages are above") from None
