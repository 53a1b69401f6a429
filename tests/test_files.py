"""The one atomic-write helper every output goes through, and the loss log's reader."""

import json
import os
from pathlib import Path

import pytest

from mmgen.files import append_jsonl, read_jsonl, write_atomic, write_json


def test_write_atomic_replaces_whole_files_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "deep" / "folder" / "out.json"
    write_json(str(target), {"a": 1})
    write_atomic(str(target), b'{"a": 2}')
    assert json.loads(target.read_text()) == {"a": 2}
    assert os.listdir(target.parent) == ["out.json"]


def test_a_failed_write_keeps_the_old_file_and_removes_its_temporary(tmp_path, monkeypatch):
    import fsspec.implementations.local as local

    target = tmp_path / "model.json"
    target.write_text("old")

    def broken_rename(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(local.LocalFileSystem, "mv", broken_rename)
    with pytest.raises(OSError, match="No space"):
        write_atomic(str(target), "new")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["model.json"]


def test_read_jsonl_leaves_out_a_torn_last_line_but_not_a_torn_middle(tmp_path):
    log = tmp_path / "loss_log.jsonl"
    for step in (1, 2):
        append_jsonl(str(log), {"step": step})
    with open(log, "a") as f:
        f.write('{"step": 3, "lo')  # a kill in the middle of the write
    assert [r["step"] for r in read_jsonl(str(log))] == [1, 2]
    log.write_text('{"step": 1}\n{"st\n{"step": 3}\n')
    with pytest.raises(ValueError, match="line 2"):
        read_jsonl(str(log))


def test_a_resumed_run_forgets_the_logged_steps_it_repeats(tmp_path):
    """Steps logged after the checkpoint a run resumes from run again; the log keeps one record per step."""
    from types import SimpleNamespace

    from mmgen.train.trainer import MMGenTrainer

    log = tmp_path / "loss_log.jsonl"
    for step in range(1, 6):
        append_jsonl(str(log), {"step": step, "loss": 1.0})
    fake = SimpleNamespace(config=SimpleNamespace(loss_log=str(log)))
    MMGenTrainer._forget_logged_steps_from(fake, 4)  # resumed from the step-3 checkpoint
    assert [r["step"] for r in read_jsonl(str(log))] == [1, 2, 3]


def test_a_finished_rank_exits_0_with_its_output_flushed(tmp_path):
    import subprocess
    import sys

    code = ("import logging, sys; from mmgen.train.trainer import end_rank_process; "
            "logging.basicConfig(stream=sys.stderr); logging.getLogger().warning('logged'); "
            "print('printed', end=''); end_rank_process(); print('never')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert proc.returncode == 0 and proc.stdout == "printed" and "logged" in proc.stderr
