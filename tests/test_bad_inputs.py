"""The error contract under fuzzing: every bad input ends in one ``error:`` line and a nonzero exit, or in a
counted skip — never a traceback, never a silent success.

One tiny run folder is built per session (shapes world, text tokenizer, an untrained image tokenizer, token
shards, a one-step model checkpoint); each case corrupts a copy of one of its files and runs the stage that
reads it, in this process. docs/RELIABILITY.md lists the faults and what each case proves.
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from bad_inputs import CORRUPTIONS, SMALL, assert_one_error_line, build_encoded_run, corrupted_copy, run_stage

from mmgen.config import ConfigError, load_config
from mmgen.config.schema import DataConfig
from mmgen.config.validation import _RULES


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    import torch.distributed.checkpoint as dcp

    from mmgen.config import RunPaths
    from mmgen.model.checkpoint import save_model_description
    from mmgen.model.transformer import Transformer, with_image_layout
    from mmgen.tokenizers.vocab import Vocab

    run = tmp_path_factory.mktemp("bad_inputs") / "run"
    build_encoded_run(run)
    cfg = load_config(["--config", "debug", "--output_dir", str(run), *SMALL])
    paths = RunPaths(str(run))
    vocab = Vocab.load(paths.vocab)
    model_cfg = with_image_layout(cfg.model, vocab)
    save_model_description(paths.pretrain_dir, model_cfg, vocab.size)
    model = Transformer(model_cfg, vocab.size)
    dcp.save(model.state_dict(), checkpoint_id=str(run / "pretrain" / "checkpoint" / "step-1"), no_dist=True)
    return run


def test_the_tiny_run_itself_passes_every_stage_check(tiny_run):
    """The baseline: the cases below fail because of their corruption, not because the run is incomplete."""
    from mmgen.train.trainer import check_pretraining_inputs

    check_pretraining_inputs(load_config(["--config", "debug", "--output_dir", str(tiny_run), *SMALL]))
    status, err = run_stage("eval/sample.py", tiny_run)
    assert status == 0, err
    assert (tiny_run / "samples" / "sample-0.json").exists()


def test_a_mixed_corpus_with_fewer_documents_than_processes_is_one_error_line(tiny_run, tmp_path):
    """Every rank draws from every corpus of a mixture: one with fewer documents than the training processes
    stops pretraining before they start, in one line naming it (not a traceback per rank)."""
    import numpy as np

    from mmgen.data.token_shards import TokenShards, npy_bytes, write_mixture

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, symlinks=True)
    train = run / "tokens" / "train"
    n = len(TokenShards(str(train)))
    shutil.move(str(train), str(tmp_path / "whole"))
    shutil.copytree(tmp_path / "whole", train / "c0")
    shutil.copytree(tmp_path / "whole", train / "c1")
    (train / "c1" / "duplicates.npy").write_bytes(npy_bytes(np.arange(1, n)))  # one document left to train on
    manifest = json.loads((train / "c0" / "manifest.json").read_text())
    write_mixture(str(train), [{"folder": "c0", "weight": 0.5}, {"folder": "c1", "weight": 0.5}],
                  {"vocab_size": manifest["vocab_size"]})
    status, err = run_stage("train/pretrain.py", run, "--processes", "2")
    assert_one_error_line(status, err, "c1 holds 1 documents to train on, fewer than the 2 training processes")


# ----- corrupt files of a run folder -----

JSON_MODES = sorted(CORRUPTIONS)
BINARY_MODES = [m for m in JSON_MODES if m != "wrong_json"]

# (file, corruption modes, stages that read it)
RUN_FILES = [
    ("tokenizers/vocab.json", JSON_MODES, ["train/pretrain.py", "eval/sample.py"]),
    ("tokenizers/text.model", BINARY_MODES, ["train/pretrain.py", "tokenizers/encode.py"]),
    ("tokenizers/image/config.json", JSON_MODES, ["tokenizers/encode.py", "eval/sample.py"]),
    ("tokenizers/image/model.safetensors", BINARY_MODES, ["tokenizers/encode.py"]),
    ("tokens/train/manifest.json", JSON_MODES, ["train/pretrain.py"]),
    ("tokens/train/*.tokens.npy", BINARY_MODES, ["train/pretrain.py"]),
    ("tokens/train/*.index.npy", BINARY_MODES, ["train/pretrain.py"]),
    ("pretrain/model.json", JSON_MODES, ["eval/sample.py"]),
    ("pretrain/checkpoint/step-1/.metadata", ["empty", "truncated", "garbage"], ["eval/sample.py"]),
    ("pretrain/checkpoint/step-1/*.distcp", ["empty", "truncated", "garbage"], ["eval/sample.py"]),
]
CASES = [(f, mode, stage) for f, modes, stages in RUN_FILES for mode in modes for stage in stages]


@pytest.mark.parametrize("relative,mode,stage", CASES, ids=[f"{s}:{f}:{m}" for f, m, s in CASES])
def test_a_corrupt_run_file_is_one_error_line_naming_it(tiny_run, tmp_path, relative, mode, stage):
    run = corrupted_copy(tiny_run, tmp_path, relative, mode)
    status, err = run_stage(stage, run)
    # the line names the file, or for a shard or checkpoint part the folder it belongs to
    named = str(Path(relative).parent) if "*" in relative or relative.endswith(".metadata") else relative
    assert_one_error_line(status, err, named)


# ----- bad config values -----

def _bad_values(key: str) -> list[str]:
    """Values the rule of ``key`` must reject (each rule asks for a range that excludes one of these)."""
    ok, _ = _RULES[key]
    candidates = ["-1", "-5", "0", "1", "1.5", "nan", "-0.5"]
    bad = []
    for raw in candidates:
        try:
            value = float(raw)
        except ValueError:
            continue
        try:
            rejected = value != value or not ok(value)
        except TypeError:
            continue
        if rejected:
            bad.append(raw)
    return bad[:1] + [v for v in bad[1:] if v == "nan"][:1]


def _typed_for(key: str, raw: str) -> str | None:
    """``raw`` as the field's type accepts it (an int field takes no '1.5' or 'nan'); None when it cannot."""
    cfg = load_config(["--config", "debug"])
    section, _, name = key.rpartition(".")
    value = getattr(getattr(cfg, section) if section else cfg, name)
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return raw if raw.lstrip("-").isdigit() else None
    return raw


CONFIG_CASES = [(k, typed) for k in _RULES for raw in _bad_values(k) if (typed := _typed_for(k, raw)) is not None]


@pytest.mark.parametrize("key,value", CONFIG_CASES, ids=[f"{k}={v}" for k, v in CONFIG_CASES])
def test_an_out_of_range_value_is_one_error_line_naming_its_field(key, value, tmp_path):
    status, err = run_stage("eval/summary.py", tmp_path / "run", f"--{key}", value, small=False)
    assert_one_error_line(status, err, key)


@pytest.mark.parametrize("overrides,named", [
    (["--model.n_heads", "5"], "model.n_heads"),
    (["--model.dim", "66", "--model.n_heads", "2"], "model.dim"),  # head_dim 33 is odd
    (["--model.n_kv_heads", "3", "--model.n_heads", "4"], "model.n_kv_heads"),
    (["--training.seq_len", "2048"], "model.max_seq_len"),
    (["--image_tokenizer.quantizer", "fsq", "--image_tokenizer.fsq_levels", "8,4"], "fsq_levels"),
    (["--data.train_weights", "0,0"], "data.train_weights"),
    (["--world.train_documents", "-5"], "world.train_documents"),
    (["--training.steps", "ten"], "training.steps"),
    (["--no.such_key", "1"], "no.such_key"),
])
def test_inconsistent_settings_are_one_error_line(overrides, named, tmp_path):
    for stage in ("data/make_world.py", "train/pretrain.py", "eval/sample.py"):
        status, err = run_stage(stage, tmp_path / "run", *overrides, small=False)
        assert_one_error_line(status, err, named)


def test_presets_pass_validation():
    for name in ("demo", "debug"):
        load_config(["--config", name])
    with pytest.raises(ConfigError):
        load_config(["--config", "debug", "--sample.top_p", "0"])


# ----- the machine and the user's own files -----

def test_an_output_folder_that_is_a_file_is_one_error_line(tmp_path):
    occupied = tmp_path / "occupied"
    occupied.write_text("not a folder")
    assert_one_error_line(*run_stage("data/make_world.py", occupied), str(occupied))


def test_a_prompt_image_that_is_not_an_image_is_one_error_line(tiny_run, tmp_path):
    notes = tmp_path / "notes.png"
    notes.write_text("these are words, not pixels")
    status, err = run_stage("eval/sample.py", tiny_run, "--sample.prompt_images", str(notes))
    assert_one_error_line(status, err, str(notes))


def test_a_full_disk_is_one_error_line(tiny_run, tmp_path, monkeypatch):
    import fsspec.implementations.local as local

    def full(self, *args, **kwargs):
        raise OSError(28, "No space left on device", args[0] if args else "?")

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    monkeypatch.setattr(local.LocalFileSystem, "mv", full)
    status, err = run_stage("eval/sample.py", run)
    assert "No space left on device" in assert_one_error_line(status, err)


# ----- run folders whose parts do not belong together -----


def test_a_vq_tokenizer_changed_after_encode_is_one_error_line(tiny_run, tmp_path):
    import torch

    from mmgen.config import RunPaths
    from mmgen.tokenizers.image import ImageTokenizer
    from mmgen.tokenizers.vqvae import VQVAE

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    cfg = load_config(["--config", "debug", "--output_dir", str(run), *SMALL])
    torch.manual_seed(1)  # other weights than the ones the tokens were encoded with
    ImageTokenizer(model=VQVAE.from_config(cfg.image_tokenizer), config=cfg.image_tokenizer).save(
        RunPaths(str(run)).image_tokenizer)
    status, err = run_stage("train/pretrain.py", run)
    assert_one_error_line(status, err, str(run / "tokens" / "train"), str(run / "tokenizers" / "image"), "image tokenizer")


def test_tokens_encoded_with_another_vocabulary_are_one_error_line(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    manifest = run / "tokens" / "train" / "manifest.json"
    record = json.loads(manifest.read_text())
    record["inputs"]["vocab"] = "0123456789abcdef"  # as encode records a vocabulary of the same size but other ids
    manifest.write_text(json.dumps(record))
    status, err = run_stage("train/pretrain.py", run)
    assert_one_error_line(status, err, str(run / "tokens" / "train"), "vocab.json", "0123456789abcdef")


def test_a_config_of_another_model_never_overwrites_model_json(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    before = (run / "pretrain" / "model.json").read_bytes()
    status, err = run_stage("train/pretrain.py", run, "--model.dim", "128")
    assert_one_error_line(status, err, "model.json", "dim 64 there, 128 now")
    assert (run / "pretrain" / "model.json").read_bytes() == before


# ----- untrusted corpora -----

def _png(seed: int = 0) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (seed * 40 % 256, 90, 160)).save(buf, format="PNG")
    return buf.getvalue()


def _write_obelics(path: Path, images: list, metadata: list | None = None) -> Path:
    """One row per image reference: ``text, image``; an optional ``metadata`` value per row."""
    rows = {"texts": [[f"Row {i} has fine text.", None] for i in range(len(images))],
            "images": [[None, ref] for ref in images]}
    if metadata is not None:
        rows["metadata"] = metadata
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(rows), path)
    return path


def _hostile_refs(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A corpus folder and image references that point outside it or at things no reader should open."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    outside = tmp_path / "secret"
    outside.mkdir()
    sentinel = outside / "sentinel.png"
    sentinel.write_bytes(_png(1))  # a valid image: reading it would make it a training image
    (corpus / "link.png").symlink_to(sentinel)
    os.mkfifo(corpus / "pipe.png")
    depth = "../" * len(corpus.parts)
    return corpus, {
        "dotdot": f"{depth}etc/passwd",
        "dotdot_to_sentinel": "../secret/sentinel.png",
        "absolute_outside": str(sentinel),
        "file_url": f"file://{sentinel}",
        "simplecache_chain": "simplecache::http://127.0.0.1:9/x.png",
        "blockcache_chain": "blockcache::http://127.0.0.1:9/x.png",
        "memory_fs": "memory://elsewhere/x.png",
        "http_network_off": "http://127.0.0.1:9/x.png",
        "dev_zero": "/dev/zero",
        "fifo": "pipe.png",
        "symlink_out": "link.png",
        "missing": "absent.png",
        "empty_string": "",
    }


@pytest.mark.parametrize("policy", ["skip_document", "drop_image"])
@pytest.mark.parametrize("name", ["dotdot", "dotdot_to_sentinel", "absolute_outside", "file_url", "simplecache_chain",
                                  "blockcache_chain", "memory_fs", "http_network_off", "dev_zero", "fifo",
                                  "symlink_out", "missing", "empty_string"])
def test_hostile_image_references_are_counted_skips_never_reads(tmp_path, name, policy):
    from mmgen.data.corpus import open_corpus

    corpus, refs = _hostile_refs(tmp_path)
    shard = _write_obelics(corpus / "shard.parquet", [refs[name]])
    read = open_corpus(str(shard), options=DataConfig(missing_image=policy))
    docs = list(read)
    assert all(not d.images for d in docs), f"{name}: an image was read"
    if policy == "skip_document":
        assert docs == [] and read.stats.total_skipped == 1, read.stats.to_dict()
    else:  # the text survives as a text-only document, counted
        assert len(docs) == 1 and read.stats.text_only == 1 and sum(read.stats.images_dropped.values()) == 1


def test_images_inside_the_corpus_and_in_mmc4s_images_folder_are_read(tmp_path):
    from mmgen.data.corpus import open_corpus

    corpus = tmp_path / "corpus"
    (corpus / "images").mkdir(parents=True)
    (corpus / "here.png").write_bytes(_png(2))
    (corpus / "images" / "beside.png").write_bytes(_png(3))
    shard = _write_obelics(corpus / "shard.parquet", ["here.png", str(corpus / "here.png"), "beside.png"])
    read = open_corpus(str(shard), options=DataConfig(dedup_images=False))  # here.png twice: relative and absolute
    assert [len(d.images) for d in read] == [1, 1, 1], read.stats.to_dict()


def test_non_string_obelics_metadata_is_a_counted_skip(tmp_path):
    from mmgen.data.corpus import open_corpus

    shard = _write_obelics(tmp_path / "c" / "s.parquet", [_png(0), _png(1)], metadata=[7, 8])
    read = open_corpus(str(shard))
    assert list(read) == [] and read.stats.skipped == {"bad_metadata": 2}


def _mmc4_zip(path: Path, *, corrupt: bool) -> Path:
    record = {"text_list": ["A sentence about nothing much at all."], "image_info": []}
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("docs.jsonl", (json.dumps(record) + "\n") * 200)
    if corrupt:  # flip bytes inside the deflate stream, leaving the zip directory intact
        data = bytearray(path.read_bytes())
        start = 40
        data[start:start + 40] = bytes(b ^ 0x5A for b in data[start:start + 40])
        path.write_bytes(bytes(data))
    return path


def test_a_zlib_error_inside_a_jsonl_zip_is_one_error_line(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    shard = _mmc4_zip(tmp_path / "docs_shard_0.jsonl.zip", corrupt=True)
    status, err = run_stage("tokenizers/encode.py", run, "--data.train_corpus", str(shard))
    assert_one_error_line(status, err, str(shard))


def test_encoding_zero_training_documents_fails_clearly(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    corpus, refs = _hostile_refs(tmp_path)
    shard = _write_obelics(corpus / "shard.parquet", [refs["dotdot"], refs["missing"]])
    status, err = run_stage("tokenizers/encode.py", run, "--data.train_corpus", str(shard))
    line = assert_one_error_line(status, err, "0 documents")
    assert "image_outside_corpus" in line or "missing_image" in line


# ----- property tests: readers, token-id decoding, config parsing -----

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FAST
@given(key=st.sampled_from(sorted(_RULES)), raw=st.text(max_size=12))
def test_any_override_string_is_accepted_or_one_config_error(key, raw):
    try:
        load_config(["--config", "debug", f"--{key}", raw])
    except ConfigError as err:
        assert "\n" not in " ".join(str(err).split())


@FAST
@given(line=st.binary(max_size=200))
def test_any_jsonl_line_parses_or_is_a_counted_skip(line):
    from mmgen.data.mmc4 import parse_json_line, parse_record
    from mmgen.data.reading import SkipRow

    try:
        record = parse_json_line(line)
        if record is not None:
            parse_record(record)
    except SkipRow as skip:
        assert skip.reason.isidentifier()


@FAST
@given(text=st.text(max_size=300))
def test_any_loss_log_text_reads_or_names_its_bad_line(tmp_path_factory, text):
    from mmgen.files import read_jsonl

    path = tmp_path_factory.mktemp("log") / "loss_log.jsonl"
    path.write_text(text)
    try:
        records = read_jsonl(str(path))
    except ValueError as err:
        assert "line" in str(err)
    else:
        assert isinstance(records, list)


@FAST
@given(data=st.data())
def test_any_token_ids_decode_leniently_and_strictly_fail_only_with_value_error(tiny_run, data):
    from mmgen.tokenizers.text import TextTokenizer
    from mmgen.tokenizers.vocab import MultimodalTokenizer, Vocab

    vocab = Vocab.load(str(tiny_run / "tokenizers" / "vocab.json"))
    tokenizer = MultimodalTokenizer(vocab, TextTokenizer.load(str(tiny_run / "tokenizers" / "text.model")), None)
    ids = data.draw(st.lists(st.integers(-3, vocab.size + 3), max_size=80))
    parts = tokenizer.decode_parts(ids, strict=False)
    assert all(isinstance(p, str) or tuple(p.shape) == vocab.grid for p in parts)
    try:
        tokenizer.decode_parts(ids, strict=True)
    except ValueError:
        pass
