"""benchmarks/run.py's bookkeeping: ratios, and the generated section of docs/BENCHMARKS.md replaced on a rerun."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from figures import Figure  # noqa: E402
from run import BEGIN, END, main, markdown, replace_section  # noqa: E402

STAMP = {"cpu": "Test CPU", "cores": "2", "isa": "avx2", "gpu": "none", "torch": "2.x", "transformers": "5.x",
         "date": "2026-01-01 00:00 UTC"}


def test_ratio_above_one_means_faster_for_rates_and_for_seconds():
    assert Figure("s", "rate", 300.0, "tokens/s", "reference", 100.0).ratio == 3.0
    assert Figure("s", "time", 2.0, "s/image", "plain", 4.0).ratio == 2.0
    assert Figure("s", "alone", 5.0, "GFLOP/s").ratio is None
    assert Figure("s", "passes", 25.0, "passes", "plain", 50.0, lower_is_better=True).ratio == 2.0


def test_section_goes_before_the_first_heading_then_is_replaced_on_rerun():
    doc = "# Title\n\nIntro.\n\n## Older section\n\nKept.\n"
    first = markdown([Figure("5 classify", "image|label N=1", 12.5, "images/s", "without reuse", 10.0)], STAMP,
                     command="benchmarks/run.py", minutes=1.0, loads=("0.1/0.1/0.1", "0.2/0.2/0.2"))
    once = replace_section(doc, first)
    assert once.index(BEGIN) < once.index("## Older section") and once.count(BEGIN) == 1
    assert "image\\|label N=1" in once and "1.25×" in once and "Test CPU" in once
    second = markdown([Figure("1 peak", "float32 matmul peak", 80.0, "GFLOP/s")], STAMP, command="benchmarks/run.py",
                      minutes=1.0, loads=("0.1/0.1/0.1", "0.2/0.2/0.2"))
    twice = replace_section(once, second)
    assert twice.count(BEGIN) == 1 and twice.count(END) == 1
    assert "float32 matmul peak" in twice and "image\\|label" not in twice
    assert twice.startswith("# Title\n\nIntro.\n\n") and twice.endswith("## Older section\n\nKept.\n")


def test_without_transformers_the_benchmark_says_what_to_install(monkeypatch, capsys):
    """The demo installs mmgen without the test tools; the benchmark, whose baselines are transformers', then stops
    with one line naming the command that installs them, before measuring anything."""
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "transformers" else find_spec(name, *args))
    monkeypatch.setattr(sys, "argv", ["benchmarks/run.py", "--quick", "--no-docs"])
    with pytest.raises(SystemExit) as stopped:
        main()
    assert str(stopped.value) == ("error: the benchmark's baselines need transformers, one of the test tools: "
                                  "run scripts/setup.sh test")
    assert capsys.readouterr().out == ""
