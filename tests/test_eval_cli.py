"""The evaluation CLIs fail with one line on missing inputs."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["eval/report.py", "eval/classify.py"])
def test_missing_run_is_one_line(name, tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / name), "--config", "debug", "--output_dir", str(tmp_path / "empty")],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "empty" in lines[0], proc.stderr


def test_read_folder_takes_classes_and_counts_bad_files(tmp_path):
    from PIL import Image

    from mmgen.config import resolve_config
    from mmgen.eval.image_folder import read_folder

    for name, colour in (("cats", "red"), ("dogs", "blue")):
        (tmp_path / name).mkdir()
        for i in range(3):
            Image.new("RGB", (8, 8), colour).save(tmp_path / name / f"{i}.png")
    (tmp_path / "dogs" / "broken.png").write_bytes(b"not an image")
    cfg = resolve_config("debug")
    cfg.eval.image_folder, cfg.eval.images_per_class = str(tmp_path), 2
    images, truth, classes, stats = read_folder(cfg)
    assert classes == ["cats", "dogs"] and truth == [0, 0, 1, 1] and len(images) == 4
    cfg.eval.images_per_class = 0
    images, truth, classes, stats = read_folder(cfg)
    assert truth == [0, 0, 0, 1, 1, 1] and sum(stats.skipped.values()) == 1
