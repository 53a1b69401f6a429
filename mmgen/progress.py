"""Progress bars for the stages that run longer than a few seconds: count, rate and time left, on stderr.

Every long loop outside torchtitan (encode, SFT encode, evaluation, world
generation, retrieval, VQ-VAE training) goes through ``progress_bar``, so all bars
behave alike:

- a bar appears only once its loop has run ``DELAY`` seconds, so quick runs
  and tests print nothing;
- on a terminal it redraws in place; in a log (stderr not a terminal) it
  writes one plain line at most every ``LOG_INTERVAL`` seconds;
- in a multi-process job only rank 0 draws; ``TQDM_DISABLE=1`` hides every bar.

stdout stays for results, so ``stage > results.txt`` still shows the bars; a
loop that prints while its bar runs prints through ``print_above``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any, Callable, TextIO

from tqdm import tqdm

DELAY = 2.0
"""Seconds a loop runs before its bar shows."""
LOG_INTERVAL = 5.0
"""Seconds between a bar's lines when stderr is a log rather than a terminal."""


class _Lines:
    """tqdm redraws its line with carriage returns; in a log each redraw becomes a line of its own."""

    def __init__(self, stream: TextIO):
        self.stream = stream
        self.encoding = getattr(stream, "encoding", None)
        self.last = ""

    def write(self, text: str) -> None:
        text = text.replace("\r", "").rstrip()
        if text and text != self.last:  # closing redraws the last state, which may be written already
            self.stream.write(text + "\n")
            self.last = text

    def flush(self) -> None:
        self.stream.flush()


def bars_enabled() -> bool:
    return os.environ.get("RANK", "0") == "0" and os.environ.get("TQDM_DISABLE", "").lower() not in ("1", "true")


def progress_bar(iterable: Iterable | None = None, *, desc: str, total: float | None = None, unit: str = "it",
                 **kwargs: Any) -> tqdm:
    """A tqdm bar (wrapping ``iterable``, or updated by hand with ``.update(n)``) as described above.

    ``total`` defaults to ``len(iterable)``; without one the bar shows count and rate but no time left.
    """
    terminal = sys.stderr.isatty()
    return tqdm(iterable, desc=desc, total=total, unit=unit, file=sys.stderr if terminal else _Lines(sys.stderr),
                delay=DELAY, mininterval=0.5 if terminal else LOG_INTERVAL, ascii=None if terminal else True,
                dynamic_ncols=terminal, disable=not bars_enabled(), **kwargs)  # fmt: skip


def print_above(message: str) -> None:
    """``print`` for a loop with a bar: on a terminal the bars step aside for the line and are redrawn below it."""
    tqdm.write(message, file=sys.stdout)


def sampler_progress(bar: tqdm) -> Callable[[int, int], None]:
    """The sampler's ``progress(step, max_new_tokens)`` callback, moving ``bar`` along the decode steps."""

    def advance(step: int, total: int) -> None:
        bar.total = total
        bar.update(step - bar.n)

    return advance
