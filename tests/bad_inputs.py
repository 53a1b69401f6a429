"""Helpers of the bad-input (fuzz) suite: stage CLIs run in this process, a tiny run folder, corruptions.

Running a stage through ``runpy`` is what ``python stage.py`` does minus the interpreter start and the
imports, so a hundred cases cost seconds, not minutes. Training stages are never started: their checks of
inputs run before torchrun and are what the cases exercise.
"""

from __future__ import annotations

import contextlib
import io
import os
import runpy
import shutil
import sys
from pathlib import Path
from unittest import mock

import torch

ROOT = Path(__file__).resolve().parents[1]

# the debug config made smaller still: every case and the fixture use the same overrides
SMALL = ["--world.train_documents", "12", "--world.heldout_documents", "4", "--world.train_caption_pairs", "8",
         "--world.heldout_caption_pairs", "4", "--world.documents_per_shard", "6", "--text_tokenizer.vocab_size", "300",
         "--image_tokenizer.train_steps", "3", "--image_tokenizer.checkpoint_every", "0", "--training.steps", "1",
         "--sample.max_new_tokens", "4", "--sample.force_image", "false"]


def run_stage(script: str, run_dir: Path | str, *extra: str, small: bool = True) -> tuple[int, str]:
    """(exit status, stderr) of ``python <script> --config debug --output_dir <run_dir> ...`` run in-process.

    An exception other than SystemExit escapes: that is a traceback, which the caller's test reports.
    """
    argv = [str(ROOT / script), "--config", "debug", "--output_dir", str(run_dir), *(SMALL if small else []), *extra]
    # a stage sets process-wide torch state (grad mode, threads) as its own process may; keep it out of the tests
    grad, threads = torch.is_grad_enabled(), torch.get_num_threads()
    try:
        return _run_path(script, argv)
    finally:
        torch.set_grad_enabled(grad)
        torch.set_num_threads(threads)


def _run_path(script: str, argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with mock.patch.object(sys, "argv", argv), contextlib.redirect_stderr(err), \
            contextlib.redirect_stdout(io.StringIO()), mock.patch.dict(os.environ, {"OMP_NUM_THREADS": "1"}):  # fmt: skip
        try:
            runpy.run_path(str(ROOT / script), run_name="__main__")
        except SystemExit as exit_:
            code = exit_.code
            if isinstance(code, str):  # SystemExit("error: ...") prints its message and exits 1
                err.write(code + "\n")
                code = 1
            return int(code or 0), err.getvalue()
    return 0, err.getvalue()


def assert_one_error_line(status: int, stderr: str, *names: str) -> str:
    """Nonzero exit, no traceback, one ``error:`` line (the last) naming each of ``names``; returns that line."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert status != 0, f"exit status 0 on bad input; stderr:\n{stderr[-2000:]}"
    assert "Traceback" not in stderr, stderr[-3000:]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], stderr[-2000:]
    for name in names:
        assert name in errors[0], (name, errors[0])
    return errors[0]


# ----- corruptions of one file of a run folder -----


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _truncated(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _garbage(path: Path) -> None:
    path.write_bytes(bytes((i * 37 + 11) % 256 for i in range(max(64, path.stat().st_size))))


def _wrong_json(path: Path) -> None:
    path.write_text('[1, "two", {"three": null}]')


def _a_directory(path: Path) -> None:
    path.unlink()
    path.mkdir()


CORRUPTIONS = {"empty": _empty, "truncated": _truncated, "garbage": _garbage, "wrong_json": _wrong_json,
               "directory": _a_directory}


def corrupted_copy(run: Path, tmp: Path, relative: str, corruption: str) -> Path:
    """A copy of ``run`` with the file matching ``relative`` (a glob) corrupted; returns the copy."""
    copy = tmp / "run"
    shutil.copytree(run, copy, symlinks=True)
    target = sorted(copy.glob(relative))[0]
    CORRUPTIONS[corruption](target)
    return copy


def build_encoded_run(run: Path) -> None:
    """A run folder through encode: shapes world, text tokenizer, an untrained VQ-VAE, token shards (SMALL)."""
    from mmgen.config import RunPaths, load_config
    from mmgen.tokenizers.image import ImageTokenizer
    from mmgen.tokenizers.vqvae import VQVAE

    for script in ("data/make_world.py", "tokenizers/train_text.py"):
        assert run_stage(script, run)[0] == 0, script
    cfg = load_config(["--config", "debug", "--output_dir", str(run), *SMALL])
    torch.manual_seed(0)  # an untrained VQ-VAE tokenizes as well as a trained one for these tests
    ImageTokenizer(model=VQVAE.from_config(cfg.image_tokenizer), config=cfg.image_tokenizer).save(
        RunPaths(str(run)).image_tokenizer)
    status, err = run_stage("tokenizers/encode.py", run)
    assert status == 0, err
