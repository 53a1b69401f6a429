"""The one wrapper every stage script runs its ``main`` through.

A user mistake (a bad config override, a corpus that is wrong as a whole, a missing or stale input file) ends the
run with one line, ``error: <message>``, on stderr and exit status 2 — not a traceback. Anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from typing import Callable

from mmgen.config.errors import ConfigError
from mmgen.config.paths import StaleInputError
from mmgen.data.obelics import CorpusError

USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, CorpusError, FileNotFoundError, StaleInputError)


def run_cli(main: Callable[[], None]) -> None:
    try:
        main()
    except USER_ERRORS as err:
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2) from None
