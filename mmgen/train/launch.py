"""Start a local multi-process job the way torchrun does, from inside a CLI.

A CLI checks its config and inputs first, so a user mistake is one line here
rather than one line per rank plus torchrun's failure report.
"""

from __future__ import annotations

from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import get_args_parser, run


def launch_local(script: str, argv: list[str], *, processes: int) -> None:
    args = get_args_parser().parse_args(["--standalone", f"--nproc_per_node={processes}", script, *argv])
    try:
        run(args)
    except ChildFailedError as err:
        ranks = ", ".join(f"rank {r} (exit code {f.exitcode})" for r, f in sorted(err.failures.items()))
        raise SystemExit(f"error: {script} failed on {ranks}; its own messages are above") from None
