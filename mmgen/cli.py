"""What every stage script shares: ``start_stage`` (config, run paths, clock, timing record) and ``run_cli``.

``run_cli`` is the one wrapper every stage script runs its ``main`` through.

A user mistake (a bad config override, a corpus that is wrong as a whole, a missing, corrupt or stale input
file) or a fault of the machine rather than of mmgen (a full disk, an output folder that is a file, no
permission, Ctrl-C) ends the run with one line, ``error: <message>``, on stderr and a nonzero exit status
(2; 130 for an interruption) — not a traceback. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Callable, NoReturn

from mmgen.config import ExperimentConfig, RunPaths, load_config
from mmgen.config.errors import ConfigError
from mmgen.config.paths import StaleInputError
from mmgen.data.obelics import CorpusError
from mmgen.data.token_shards import TokenShardError
from mmgen.files import CorruptFileError, write_json
from mmgen.nonfinite import NonFiniteError

# the machine's faults (OSError: a missing file, a full disk, ...) are handled beside these
USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, CorpusError, CorruptFileError, NonFiniteError, StaleInputError,
                                                TokenShardError)


def describe_os_error(err: OSError) -> str:
    """'No space left on device: /run/x' rather than Python's '[Errno 28] ...' repr."""
    if err.strerror and err.filename:
        return f"{err.strerror}: {err.filename}"
    return str(err) or type(err).__name__


def fail(message: str, status: int = 2) -> NoReturn:
    print(f"error: {' '.join(message.split())}", file=sys.stderr)
    raise SystemExit(status) from None


def run_cli(main: Callable[[], None]) -> None:
    try:
        main()
    except USER_ERRORS as err:
        fail(str(err) or type(err).__name__)
    except OSError as err:
        fail(describe_os_error(err))
    except KeyboardInterrupt:
        fail("interrupted", status=130)


@dataclass
class Stage:
    """One run of a stage script: its config, the run folder's paths, and a clock started with it."""

    name: str
    """The stage's name in ``timings/<name>.json``."""
    cfg: ExperimentConfig
    paths: RunPaths
    started: float = field(default_factory=time.perf_counter)

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started

    def record_timing(self, **figures) -> None:
        """Write ``timings/<name>.json``: the wall time since the stage started, and ``figures``."""
        write_json(self.paths.stage_timing(self.name), {"seconds": round(self.seconds, 3), **figures})


def start_stage(name: str, description: str, argv: list[str] | None = None,
                aliases: dict[str, str] | None = None) -> Stage:  # fmt: skip
    """The config from the command line (``argv``, default ``sys.argv[1:]``) and the run's paths; the clock starts."""
    cfg = load_config(argv, description=description, aliases=aliases)
    return Stage(name, cfg, RunPaths(cfg.run_dir))
