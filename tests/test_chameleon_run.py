"""An imported Chameleon checkpoint used as a new user would: the unchanged CLIs, one after the other.

A tiny random ``ChameleonForConditionalGeneration`` folder with a BPE
``tokenizer.json`` (tests/chameleon_helpers.py) is imported with
train/convert_chameleon.py, then sampled, classified on an ImageFolder,
fine-tuned (full and LoRA) on caption pairs and exported back; transformers
loads the export and computes mmgen's logits. The failures of import are one
``error:`` line each and leave nothing behind.
"""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
from PIL import Image  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformers import ChameleonForConditionalGeneration  # noqa: E402

from chameleon_helpers import sample_images, write_checkpoint, write_vqgan_checkpoint  # noqa: E402
from mmgen.config import RunPaths  # noqa: E402
from mmgen.model.checkpoint import load_trained_model  # noqa: E402
from mmgen.tokenizers.hf_text import HFTextTokenizer  # noqa: E402
from mmgen.tokenizers.run import load_text_tokenizer, text_tokenizer_record  # noqa: E402

transformers.logging.set_verbosity_error()
ROOT = Path(__file__).resolve().parents[1]
CONVERT = ROOT / "train" / "convert_chameleon.py"


def cli(name: str, run: Path, *extra: str, ok: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, str(ROOT / name), *extra, "--config", "debug", "--output_dir", str(run)],
        cwd=ROOT, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    if ok:
        assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def write_user_data(root: Path, run: Path) -> Path:
    """An ImageFolder of two classes, and caption pairs in the run's corpus folder (what a user brings)."""
    images = [Image.fromarray(a.numpy()) for a in sample_images(12, 24)]
    for c, label in enumerate(("cat", "dog")):
        (root / "folder" / label).mkdir(parents=True)
        for i in range(3):
            images[3 * c + i].save(root / "folder" / label / f"{i}.png")
    (run / "corpus" / "img").mkdir(parents=True)
    captions = ["a red circle on the left", "Here is a drawing of a cat."]
    for split, rows in (("train", range(8)), ("heldout", range(8, 12))):
        with open(run / "corpus" / f"captions-{split}.jsonl", "w") as f:
            for i in rows:
                images[i].save(run / "corpus" / "img" / f"{i}.png")
                f.write(json.dumps({"image": f"img/{i}.png", "caption": captions[i % 2]}) + "\n")
    return root / "folder"


def assert_export_computes(out: Path, run_folder: Path, source: ChameleonForConditionalGeneration) -> None:
    """transformers loads the export; its logits are mmgen's, and the VQ-VAE is the source's."""
    hf = ChameleonForConditionalGeneration.from_pretrained(out).eval()
    ours, _ = load_trained_model(str(run_folder))
    ids = torch.randint(0, hf.config.vocab_size, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = hf.lm_head(hf.model(input_ids=ids).last_hidden_state)  # unmasked: the reference masks image codes
        torch.testing.assert_close(ours(ids), want, atol=1e-4, rtol=1e-4)
    theirs = hf.state_dict()
    for key, value in source.state_dict().items():
        if "vqmodel" in key:
            assert torch.equal(value, theirs[key]), key
    assert json.loads((out / "config.json").read_text())["vocabulary_map"] == source.config.vocabulary_map
    assert (out / "tokenizer.json").exists()


@pytest.mark.slow
def test_import_sample_classify_finetune_export(tmp_path):
    hf_dir, run = tmp_path / "chameleon", tmp_path / "run"
    source, _ = write_checkpoint(str(hf_dir), seed=1)
    write_vqgan_checkpoint(str(tmp_path / "vqgan.ckpt"), source)

    # without decoder weights: text and image codes, and one line saying why there are no pictures
    proc = cli("train/convert_chameleon.py", run, "import", "--hf_dir", str(hf_dir))
    assert "note: no VQ-VAE decoder weights" in proc.stdout
    proc = cli("eval/sample.py", run, "--prompt", "a red circle")
    assert "no decoder" in proc.stdout
    record = json.loads((run / "samples" / "sample-0.json").read_text())
    assert record["text"].startswith("a red circle") and not record["images"]
    codes = [p["codes"] for p in record["parts"] if "codes" in p]
    assert codes and len(json.loads((run / "samples" / codes[0]).read_text())) == 8  # an 8x8 grid of codes

    # an import into a folder that holds a run is refused (one line, the run untouched) unless asked to replace it
    proc = cli("train/convert_chameleon.py", run, "import", "--hf_dir", str(hf_dir), "--vq_decoder",
               str(tmp_path / "vqgan.ckpt"), ok=False)  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.startswith("error:") and "--replace" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and (run / "samples").exists()
    cli("train/convert_chameleon.py", run, "import", "--hf_dir", str(hf_dir), "--vq_decoder",
        str(tmp_path / "vqgan.ckpt"), "--replace")  # fmt: skip
    assert not (run / "samples").exists()

    # a text prompt writes a page with text and a rendered image, like a trained mmgen run
    cli("eval/sample.py", run, "--prompt", "a red circle", "--sample.prompt_sep", "true")  # Chameleon's chat form
    record = json.loads((run / "samples" / "sample-0.json").read_text())
    assert record["prompt_ids"][-1] == source.config.vocabulary_map["<reserved08706>"]
    assert record["images"] == ["sample-0-image-0.png"]
    assert Image.open(run / "samples" / "sample-0-image-0.png").size == (16, 16)
    page = (run / "samples" / "index.html").read_text()
    assert "<img" in page and "a red circle" in page

    folder = write_user_data(tmp_path, run)
    cli("eval/classify.py", run, "--eval.image_folder", str(folder), "--eval.template", "Here is a drawing of a {label}.")
    results = json.loads((run / "eval" / "classify" / "results.json").read_text())["tasks"]
    assert results["folder/label_given_image"]["labels"] == ["cat", "dog"]
    assert len(results["folder/image_given_label"]["predictions"]) == 6

    # SFT on the user's caption pairs, tokenized with the imported tokenizers; full (two ranks) and LoRA
    cli("tokenizers/encode_sft.py", run, "--sft.tasks", "caption=1,t2i=1")
    cli("train/sft.py", run, "--sft.epochs", "1", "--training.seq_len", "128")
    cli("train/sft.py", run, "--sft.epochs", "1", "--training.seq_len", "128", "--sft.lora_rank", "4",
        "--sft.folder", "sft_lora", "--processes", "1")  # fmt: skip
    assert load_file(str(run / "sft_lora" / "adapters.safetensors"))
    pretrained, _ = load_trained_model(str(run / "pretrain"))
    for folder_name in ("sft", "sft_lora"):
        tuned, step = load_trained_model(str(run / folder_name))
        assert step > 0 and not torch.equal(tuned.layers["0"].attention.wq.weight, pretrained.layers["0"].attention.wq.weight)
        out = tmp_path / f"export-{folder_name}"
        cli("train/convert_chameleon.py", run, "export", "--from_folder", folder_name, "--hf_dir", str(out))
        assert_export_computes(out, run / folder_name, source)


def convert(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    """The import CLI in this process (fast); returns the exit status and stderr."""
    monkeypatch.setattr(sys, "argv", [str(CONVERT), *args])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(CONVERT), run_name="__main__")
    return exit_.value.code or 0, capsys.readouterr().err


def test_import_failures_are_one_line_and_leave_nothing(tmp_path, monkeypatch, capsys):
    hf_dir = tmp_path / "chameleon"
    write_checkpoint(str(hf_dir), seed=2)
    run = tmp_path / "runs" / "run"

    def refused(*extra: str, hf: Path = hf_dir, match: str) -> None:
        code, err = convert(monkeypatch, capsys, "import", "--hf_dir", str(hf), "--output_dir", str(run), *extra)
        assert code == 2 and err.startswith("error:") and len(err.strip().splitlines()) == 1, err
        assert match in err, err
        leftovers = [p.name for p in (tmp_path / "runs").iterdir()] if (tmp_path / "runs").exists() else []
        assert leftovers in ([], ["run"]) and not [p for p in leftovers if p.startswith(".")]

    refused(hf=tmp_path / "nowhere", match="config.json")
    code, err = convert(monkeypatch, capsys, "import", "--hf_dir", str(hf_dir), "--output_dir", str(hf_dir), "--replace")
    assert code == 2 and "must not contain" in err and (hf_dir / "model.safetensors").exists()  # the source is safe
    # not a Chameleon checkpoint
    config = json.loads((hf_dir / "config.json").read_text())
    (hf_dir / "config.json").write_text(json.dumps({**config, "model_type": "llama"}))
    refused(match="model_type")
    (hf_dir / "config.json").write_text(json.dumps(config))
    # no text tokenizer
    (hf_dir / "tokenizer.json").rename(tmp_path / "tokenizer.json")
    refused(match="tokenizer.json")
    (tmp_path / "tokenizer.json").rename(hf_dir / "tokenizer.json")
    # decoder weights that are not there, or not a VQGAN decoder
    refused("--vq_decoder", str(tmp_path / "missing.ckpt"), match="missing.ckpt")
    torch.save({"state_dict": {"decoder.conv_in.weight": torch.zeros(1)}}, tmp_path / "bad.ckpt")
    refused("--vq_decoder", str(tmp_path / "bad.ckpt"), match="do not fit")
    assert not run.exists()

    assert convert(monkeypatch, capsys, "import", "--hf_dir", str(hf_dir), "--output_dir", str(run))[0] == 0
    paths = RunPaths(str(run))
    assert text_tokenizer_record(paths) == {"kind": "huggingface", "file": "tokenizer.json"}
    assert isinstance(load_text_tokenizer(paths), HFTextTokenizer)
    vocab_before = (run / "tokenizers" / "vocab.json").read_text()
    refused(match="already holds files")
    assert (run / "tokenizers" / "vocab.json").read_text() == vocab_before
    # a failing replacement keeps the old run
    (hf_dir / "tokenizer.json").rename(tmp_path / "tokenizer.json")
    refused("--replace", match="tokenizer.json")
    assert (run / "pretrain" / "model.json").exists()
