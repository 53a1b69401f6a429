"""Training faults: kill -9 mid-step and mid-save then resume, a corrupt newest checkpoint, a world-size change
(2 -> 1 -> 2), NaN losses; each provoked for real on a tiny pretraining run with gloo on CPU.

The slow tests start ``train/pretrain.py`` (torchrun inside) as a user would. A kill at a named point uses
the test hook of ``mmgen.train.fault_injection``: the job pauses there and the test kills every process of it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from bad_inputs import SMALL, build_encoded_run

from mmgen.config.paths import StaleInputError
from mmgen.files import CorruptFileError
from mmgen.config.schema import ModelConfig
from mmgen.model.checkpoint import (checkpoint_problem, checkpoint_steps, load_trained_model, model_description,
                                    read_checkpoint_metadata, save_model_description)
from mmgen.model.transformer import Transformer
from mmgen.nonfinite import NonFiniteError, NonFiniteGuard, all_finite
from mmgen.train.checkpointing import MMGenCheckpointManager, check_shapes
from mmgen.train.trainer import check_resumable

ROOT = Path(__file__).resolve().parents[1]
# eight steps, a checkpoint every two, every checkpoint kept, a loss record every step
TRAIN = [*SMALL, "--training.steps", "8", "--checkpoint.interval", "2", "--checkpoint.keep_latest_k", "0",
         "--metrics.log_freq", "1", "--metrics.enable_tensorboard", "false"]  # fmt: skip


# ----- fast: the pieces -----


def _tiny_checkpoint(folder: Path) -> Path:
    state = {"w": torch.arange(12.0).reshape(3, 4), "b": torch.ones(5)}
    dcp.save(state, checkpoint_id=str(folder), no_dist=True)
    return folder


@pytest.mark.parametrize("damage", ["truncated shard", "missing shard", "garbage metadata", "empty metadata"])
def test_a_damaged_checkpoint_is_named_corrupt(tmp_path, damage):
    ckpt = _tiny_checkpoint(tmp_path / "step-2")
    assert checkpoint_problem(str(ckpt)) is None
    shard = next(ckpt.glob("*.distcp"))
    if damage == "truncated shard":
        shard.write_bytes(shard.read_bytes()[:-10])
    elif damage == "missing shard":
        shard.unlink()
    else:
        (ckpt / ".metadata").write_bytes(b"" if damage == "empty metadata" else os.urandom(300))
    problem = checkpoint_problem(str(ckpt))
    assert problem and (shard.name in problem or ".metadata" in problem), problem


def _manager_of(folder: Path) -> MMGenCheckpointManager:
    manager = object.__new__(MMGenCheckpointManager)  # only the folder logic: no model, no process group
    manager.folder = str(folder)
    return manager


def test_the_newest_complete_and_intact_checkpoint_is_chosen(tmp_path):
    folder = tmp_path / "checkpoint"
    for step in (2, 4, 6):
        _tiny_checkpoint(folder / f"step-{step}")
    (folder / "step-8").mkdir()  # killed mid-save: data files, no .metadata
    (folder / "step-8" / "__0_0.distcp").write_bytes(b"partial")
    shard = next((folder / "step-6").glob("*.distcp"))
    shard.write_bytes(shard.read_bytes()[:20])
    assert checkpoint_steps(str(folder)) == [2, 4, 6]
    assert _manager_of(folder)._find_load_step() == 4


def test_every_checkpoint_corrupt_is_an_error_not_a_fresh_start(tmp_path):
    folder = tmp_path / "checkpoint"
    for step in (2, 4):
        (_tiny_checkpoint(folder / f"step-{step}") / ".metadata").write_bytes(b"garbage")
    with pytest.raises(CorruptFileError, match="every checkpoint"):
        _manager_of(folder)._find_load_step()
    assert _manager_of(tmp_path / "none")._find_load_step() == -1  # no checkpoint at all: a fresh start


def test_the_eval_stages_load_past_a_corrupt_newest_checkpoint_with_a_warning(tmp_path, capsys):
    cfg = ModelConfig(dim=32, n_layers=1, n_heads=2)
    save_model_description(str(tmp_path), cfg, vocab_size=40)
    states = {}
    for step in (2, 4):
        torch.manual_seed(step)
        states[step] = Transformer(cfg, 40).state_dict()
        dcp.save(states[step], checkpoint_id=str(tmp_path / "checkpoint" / f"step-{step}"), no_dist=True)
    shard = next((tmp_path / "checkpoint" / "step-4").glob("*.distcp"))
    shard.write_bytes(shard.read_bytes()[:100])
    model, step = load_trained_model(str(tmp_path))
    assert step == 2
    assert all(torch.equal(value, states[2][key]) for key, value in model.state_dict().items())
    warning = capsys.readouterr().err.strip().splitlines()
    assert len(warning) == 1 and "step-4 is corrupt" in warning[0] and warning[0].startswith("warning:")
    with pytest.raises(CorruptFileError):  # a step asked for by number is loaded or refused, never swapped
        load_trained_model(str(tmp_path), step=4)


def test_a_model_json_that_still_lists_the_z_loss_weight_loads(tmp_path):
    """The z-loss weight moved from the model section to training; model.json files written before list it."""
    cfg = ModelConfig(dim=32, n_layers=1, n_heads=2)
    save_model_description(str(tmp_path), cfg, vocab_size=40)
    old = json.loads((tmp_path / "model.json").read_text())
    assert "z_loss_weight" not in old["model"]
    old["model"]["z_loss_weight"] = 1e-5
    (tmp_path / "model.json").write_text(json.dumps(old))
    torch.manual_seed(0)
    dcp.save(Transformer(cfg, 40).state_dict(), checkpoint_id=str(tmp_path / "checkpoint" / "step-1"), no_dist=True)
    model, step = load_trained_model(str(tmp_path))
    assert step == 1 and model.cfg == cfg


def test_a_model_json_written_before_a_model_field_existed_still_resumes_and_loads(tmp_path):
    cfg = ModelConfig(dim=32, n_layers=1, n_heads=2)
    save_model_description(str(tmp_path), cfg, vocab_size=40)
    old = json.loads((tmp_path / "model.json").read_text())
    del old["model"]["image_grid_embedding"], old["model"]["image_layout"]
    (tmp_path / "model.json").write_text(json.dumps(old))
    dcp.save(Transformer(cfg, 40).state_dict(), checkpoint_id=str(tmp_path / "checkpoint" / "step-1"), no_dist=True)
    check_resumable(str(tmp_path), "checkpoint", model_description(cfg, 40))  # no error: the same model
    with pytest.raises(StaleInputError, match="image_grid_embedding False there, True now"):
        check_resumable(str(tmp_path), "checkpoint", model_description(dataclasses.replace(cfg, image_grid_embedding=True), 40))
    assert load_trained_model(str(tmp_path))[0].cfg == cfg


def test_a_checkpoint_of_another_model_shape_is_one_line_naming_both(tmp_path):
    ckpt = _tiny_checkpoint(tmp_path / "step-2")
    metadata = read_checkpoint_metadata(str(ckpt))
    check_shapes({"w": torch.zeros(3, 4), "optimizer": object()}, metadata, str(ckpt))
    with pytest.raises(StaleInputError, match=r"step-2 holds a model of another shape \(w: \[3, 4\] there, \[3, 8\]"):
        check_shapes({"w": torch.zeros(3, 8)}, metadata, str(ckpt))


def test_nonfinite_guard_policies():
    assert all_finite([torch.ones(3), None]) and not all_finite([torch.tensor([1.0, float("inf")])])
    with pytest.raises(NonFiniteError, match="step 7"):
        NonFiniteGuard("stop").allow_step(7, False)
    guard = NonFiniteGuard("skip", max_consecutive_skips=3)
    assert guard.allow_step(1, True) and not guard.allow_step(2, False) and not guard.allow_step(3, False)
    assert guard.allow_step(4, True) and guard.skipped == 2  # a finite step resets the run of skips
    guard.allow_step(5, False), guard.allow_step(6, False)
    with pytest.raises(NonFiniteError, match="3 steps in a row"):
        guard.allow_step(7, False)


# ----- slow: real pretraining jobs, killed and resumed -----


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _pretrain_cmd(run: Path, extra: tuple[str, ...]) -> list[str]:
    return [sys.executable, str(ROOT / "train/pretrain.py"), "--config", "debug", "--output_dir", str(run), *TRAIN, *extra]


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **extra}


def pretrain(run: Path, *extra: str, fault: str = "", ok: bool = True) -> str:
    """Run pretraining to its end; returns its output (stdout and stderr)."""
    proc = subprocess.run(_pretrain_cmd(run, extra), cwd=ROOT, capture_output=True, text=True,
                          env=_env(MMGEN_TEST_FAULT=fault), timeout=900)  # fmt: skip
    out = proc.stdout + proc.stderr
    assert (proc.returncode == 0) == ok, f"exit {proc.returncode}:\n{out[-4000:]}"
    return out


def pretrain_killed_at(run: Path, point: str, *extra: str) -> str:
    """Run pretraining until it pauses at ``point``, then SIGKILL every process of the job; returns its output."""
    marker = run.parent / f"paused-{point}"
    marker.unlink(missing_ok=True)
    log = run.parent / f"killed-{point}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(_pretrain_cmd(run, extra), cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                env=_env(MMGEN_TEST_FAULT=f"pause:{point}", MMGEN_TEST_FAULT_MARKER=str(marker)))  # fmt: skip
        deadline = time.time() + 900
        while not marker.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        job = [proc.pid, *_descendants(proc.pid)]
        for pid in job:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()
    text = log.read_text()
    assert marker.exists(), f"the job never reached {point}:\n{text[-4000:]}"
    return text


def losses(run: Path) -> list[tuple]:
    records = [json.loads(line) for line in (run / "pretrain" / "loss_log.jsonl").read_text().splitlines()]
    return [(r["step"], r["text_loss"], r["image_loss"], r["loss"]) for r in records]


@pytest.fixture(scope="module")
def encoded_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("faults") / "run"
    build_encoded_run(run)
    return run


@pytest.fixture(scope="module")
def reference(encoded_run, tmp_path_factory) -> Path:
    """The uninterrupted run: 8 steps on 2 ranks, checkpoints at 2, 4, 6, 8."""
    run = tmp_path_factory.mktemp("reference") / "run"
    shutil.copytree(encoded_run, run)
    pretrain(run)
    return run


@pytest.mark.slow
def test_kill_mid_save_and_mid_step_then_resume_gives_the_same_losses(encoded_run, reference, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(encoded_run, run)
    checkpoints = run / "pretrain" / "checkpoint"

    pretrain_killed_at(run, "save-step-4")
    assert list((checkpoints / "step-4").glob("*.distcp")) and not (checkpoints / "step-4" / ".metadata").exists()
    assert checkpoint_steps(str(checkpoints)) == [2]

    out = pretrain_killed_at(run, "step-6")  # resumes from step 2, saves step 4 anew, dies inside step 6
    assert "Training starts at step 3" in out
    assert checkpoint_steps(str(checkpoints)) == [2, 4]

    out = pretrain(run)
    assert "Training starts at step 5" in out
    assert losses(run) == losses(reference)  # bitwise: the floats of the JSON records are compared exactly
    assert [s for s, *_ in losses(run)] == list(range(1, 9))


@pytest.mark.slow
def test_corrupt_newest_checkpoint_falls_back_and_world_size_goes_2_1_2(reference, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    checkpoints = run / "pretrain" / "checkpoint"
    shard = checkpoints / "step-8" / "__1_0.distcp"
    shard.write_bytes(shard.read_bytes()[:1000])

    out = pretrain(run, "--training.steps", "10", "--processes", "1")
    assert f"checkpoint {checkpoints / 'step-8'} is corrupt (__1_0.distcp holds 1000 bytes" in out
    assert "Training starts at step 7" in out
    assert "the checkpoint's data loader ran on 2 data-parallel ranks, this run has 1" in out
    assert "Traceback" not in out
    assert checkpoint_steps(str(checkpoints))[-2:] == [8, 10]  # step 8 written anew over the corrupt one
    assert checkpoint_problem(str(checkpoints / "step-8")) is None

    out = pretrain(run, "--training.steps", "12")
    assert "Training starts at step 11" in out
    assert "the checkpoint's data loader ran on 1 data-parallel ranks, this run has 2" in out
    steps = [s for s, *_ in losses(run)]
    assert steps == list(range(1, 13))
    assert all(torch.isfinite(torch.tensor(r[1:])).all() for r in losses(run))


@pytest.mark.slow
def test_a_nan_loss_is_skipped_or_stops_the_run_before_any_checkpoint_holds_it(encoded_run, reference, tmp_path):
    skip = tmp_path / "skip" / "run"
    shutil.copytree(encoded_run, skip)
    out = pretrain(skip, "--training.nonfinite", "skip", fault="nan:step-3")
    assert "step 3: the loss or a gradient is NaN or inf; step skipped" in out
    logged = losses(skip)
    assert [s for s, *_ in logged] == [1, 2, 4, 5, 6, 7, 8]  # the skipped step's losses stay out of the log
    assert logged[:2] == losses(reference)[:2]
    assert all(torch.isfinite(torch.tensor(r[1:])).all() for r in logged)  # the model was never poisoned

    stop = tmp_path / "stop" / "run"
    shutil.copytree(encoded_run, stop)
    out = pretrain(stop, fault="nan:step-3", ok=False)  # "stop" is the default policy
    assert "error: training step 3: the loss or a gradient is NaN or inf; stopped before the optimizer step" in out
    assert "Traceback" not in out
    assert checkpoint_steps(str(stop / "pretrain" / "checkpoint")) == [2]
