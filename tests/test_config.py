import re
import subprocess
import sys
from pathlib import Path

import pytest

from mmgen import cpu_features
from mmgen.config import ConfigError, ExperimentConfig, RunPaths, load_config, resolve_config

ROOT = Path(__file__).resolve().parents[1]


def my_config() -> ExperimentConfig:
    cfg = ExperimentConfig(name="mine")
    cfg.model.dim = 48
    return cfg


def test_builtin_and_user_configs():
    assert load_config(["--config", "debug"]).name == "debug"
    assert load_config([]).name == "demo"
    cfg = load_config(["--config", "tests.test_config:my_config"])
    assert (cfg.name, cfg.model.dim, cfg.run_dir) == ("mine", 48, "outputs/mine")


def test_dotted_overrides_are_typed():
    cfg = load_config(
        ["--config", "debug", "--model.dim", "96", "--optimizer.lr=0.01", "--model.qk_norm", "false",
         "--model.norm_placement", "swin", "--output_dir", "/tmp/run"]
    )
    assert cfg.model.dim == 96 and cfg.optimizer.lr == 0.01 and cfg.model.qk_norm is False
    assert cfg.model.norm_placement == "swin"
    assert RunPaths(cfg.run_dir).vocab == "/tmp/run/tokenizers/vocab.json"


def test_aliases_map_to_keys():
    cfg = load_config(["--prompt", "a blue square"], aliases={"prompt": "sample.prompt"})
    assert cfg.sample.prompt == "a blue square"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--config", "nope"], "unknown config 'nope'"),
        (["--model.dimm", "3"], "unknown config key 'model.dimm' (did you mean 'model.dim'?)"),
        (["--model.dim", "wide"], "bad value for 'model.dim'"),
        (["--model.norm_placement", "post"], "bad value for 'model.norm_placement'"),
        (["--model.dim"], "missing value for '--model.dim'"),
        (["--config", "nowhere.module:fn"], "cannot import config module 'nowhere.module'"),
    ],
)
def test_errors_name_the_problem(argv, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(argv)


def test_user_function_must_return_a_config():
    with pytest.raises(ConfigError, match="has no function"):
        resolve_config("tests.test_config:missing")


def test_help_lists_every_field_with_its_doc(capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_config(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--training.steps int" in out and "Optimisation steps." in out
    assert "--model.norm_placement {pre,swin}" in out


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--config", "nope"], "unknown config 'nope'"),
        (["--config", "debug", "--world.sed", "1"], "unknown config key 'world.sed'"),
    ],
)
def test_cli_prints_one_line_without_traceback(argv, fragment, tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "data" / "make_world.py"), *argv, "--output_dir", str(tmp_path)],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0]


@pytest.mark.parametrize("cpuinfo, name, bf16, amx, steps, width", [
    ("model name\t: Intel(R) Xeon(R) Platinum 8488C\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n",
     "Intel(R) Xeon(R) Platinum 8488C", True, True, 1000, 128),
    ("model name\t: AMD EPYC 9R14 96-Core Processor\nflags\t\t: fpu avx2 avx512f avx512_bf16\n",
     "AMD EPYC 9R14 96-Core Processor", True, False, 1000, 192),
    ("model name\t: AMD EPYC 7R13 Processor\nflags\t\t: fpu avx2 fma\n", "AMD EPYC 7R13 Processor", False, False, 570, 128),
    ("", "", False, False, 570, 128),  # no /proc/cpuinfo
])
def test_the_demo_trains_as_many_steps_as_its_cpu_family_fits(monkeypatch, cpuinfo, name, bf16, amx, steps, width):
    monkeypatch.setattr(cpu_features, "_cpuinfo", lambda: cpuinfo)
    assert (cpu_features.cpu_model_name(), cpu_features.cpu_has_bf16(), cpu_features.cpu_has_amx_bf16()) == (name, bf16, amx)
    cfg = load_config(["--config", "demo"])
    assert cfg.training.steps == steps and cfg.checkpoint.interval == -(-steps // 3)
    assert (cfg.model.dim, cfg.model.n_heads) == (width, width // 32)  # heads of 32 at every width
    # a fresh world for about one pass: 40 documents and 53 caption pairs per step
    assert (cfg.world.train_documents, cfg.world.train_caption_pairs) == (40 * steps, steps * 160 // 3)
    assert load_config(["--config", "demo", "--training.steps", "100"]).training.steps == 100  # the user's word wins
    long = load_config(["--config", "demo_long"])  # twice the steps, on twice the world
    assert (long.training.steps, long.world.train_documents, long.checkpoint.interval) == (2 * steps, 80 * steps, -(-2 * steps // 3))
