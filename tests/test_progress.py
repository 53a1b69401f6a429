"""Progress bars of the long stages: rate and time left on stderr, plain lines in a log, quiet when quick."""

import time

import pytest

from mmgen import progress


@pytest.fixture
def fast(monkeypatch):
    """Bars that show after 50 ms and redraw every 50 ms in a log, so a test loop of a few tenths shows them."""
    monkeypatch.setattr(progress, "DELAY", 0.05)
    monkeypatch.setattr(progress, "LOG_INTERVAL", 0.05)
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("TQDM_DISABLE", raising=False)


def slow_loop(n=8, pause=0.03, **kwargs):
    for _ in progress.progress_bar(range(n), desc="encode", unit="document", **kwargs):
        time.sleep(pause)


def test_a_log_gets_plain_lines_with_rate_and_time_left(fast, capsys):
    slow_loop()
    captured = capsys.readouterr()
    assert captured.out == ""  # stdout stays for results
    lines = captured.err.splitlines()
    assert len(lines) >= 2 and "\r" not in captured.err
    assert lines[-1].startswith("encode: 100%") and "8/8" in lines[-1] and "document/s" in lines[-1]
    assert "<" in lines[0]  # elapsed<left
    assert len(set(lines)) == len(lines)  # closing does not repeat the last line


def test_quick_loops_other_ranks_and_tqdm_disable_print_nothing(fast, capsys, monkeypatch):
    monkeypatch.setattr(progress, "DELAY", 5.0)
    slow_loop()
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(progress, "DELAY", 0.05)
    monkeypatch.setenv("RANK", "1")
    slow_loop()
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("TQDM_DISABLE", "1")
    slow_loop()
    assert capsys.readouterr().err == ""


def test_the_sampler_callback_moves_the_bar_along_decode_steps(fast):
    with progress.progress_bar(desc="sampling", unit="token") as bar:
        advance = progress.sampler_progress(bar)
        advance(32, 100)
        advance(64, 100)
        assert (bar.n, bar.total) == (64, 100)


def test_lines_printed_during_a_bar_go_to_stdout_and_the_bar_continues(fast, capsys):
    for i in progress.progress_bar(range(6), desc="learning curve", unit="checkpoint"):
        time.sleep(0.03)
        progress.print_above(f"[curve] step {i}")
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [f"[curve] step {i}" for i in range(6)]
    assert captured.err.splitlines()[-1].startswith("learning curve: 100%")
