"""tokenizers/encode.py: real corpora in, token shards out — mixed, split across ranks, resumable, exact."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from corpus_helpers import image_bytes, make_tokenizers, write_captions, write_imagefolder, write_mmc4, write_obelics
from mmgen.data.packing import PackedBatches
from mmgen.data.token_shards import IMAGE, SPECIAL, TEXT, TokenShards
from mmgen.tokenizers.vocab import Vocab

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def encode_cmd(run: Path, *extra: str, ranks: int = 1) -> list[str]:
    launcher = TORCHRUN if ranks == 2 else [sys.executable]
    return [*launcher, str(ROOT / "tokenizers/encode.py"), "--config", "debug", "--output_dir", str(run), *extra]


def encode(run: Path, *extra: str, ranks: int = 1) -> subprocess.CompletedProcess:
    proc = subprocess.run(encode_cmd(run, *extra, ranks=ranks), cwd=ROOT, capture_output=True, text=True, env=ENV)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def corpora(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("corpora")
    return {
        "obelics": write_obelics(root / "obelics"),
        "mmc4": write_mmc4(root / "mmc4", zipped=True),
        "folder": write_imagefolder(root / "folder"),
        "captions": write_captions(root / "captions" / "pairs.jsonl"),
    }


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory) -> Path:
    return Path(make_tokenizers(tmp_path_factory.mktemp("tok")).root)


def new_run(tmp_path: Path, tokenizers: Path, name: str = "run") -> Path:
    run = tmp_path / name
    shutil.copytree(tokenizers / "tokenizers", run / "tokenizers")
    return run


def test_mixture_of_every_kind_encodes_with_summary_provenance_and_modality(tmp_path, corpora, tokenizers):
    run = new_run(tmp_path, tokenizers)
    train = ",".join(str(corpora[k]) for k in ("obelics", "mmc4", "folder"))
    proc = encode(run, "--data.train_corpus", train, "--data.train_weights", "1,1,2",
                  "--data.heldout_corpus", str(corpora["captions"]))  # fmt: skip
    summary = json.loads((run / "timings" / "encode.json").read_text())
    assert summary["train"]["documents_in"] == 6 + 4 + 6 and summary["train"]["documents_out"] == 4 + 3 + 6
    assert summary["train"]["skipped"] == {"missing_image": 2, "url_image": 1}
    assert summary["train"]["weights"] == [0.25, 0.25, 0.5]
    assert summary["heldout"]["documents_out"] == 4
    assert '"skipped": {"missing_image": 2, "url_image": 1}' in proc.stdout

    vocab = Vocab.load(str(run / "tokenizers" / "vocab.json"))
    shards = TokenShards(str(run / "tokens" / "train"))
    assert shards.is_mixture and len(shards) == 13 and [w for _, w in shards.components] == [0.25, 0.25, 0.5]
    for i in range(len(shards)):
        tokens, modality = shards[i], shards.modality(i)
        assert tokens[0] == vocab.bos and tokens[-1] == vocab.eos and len(modality) == len(tokens)
        assert np.array_equal(modality == IMAGE, (tokens >= vocab.image_range[0]) & (tokens < vocab.image_range[1]))
        assert np.array_equal(modality == TEXT, (tokens >= vocab.text_range[0]) & (tokens < vocab.text_range[1]))
        assert set(np.unique(modality)) <= {SPECIAL, TEXT, IMAGE}
    source, row = shards.provenance(4)  # the first MMC4 document
    assert source.endswith("docs_shard_0_v2.jsonl.zip") and row == 0
    assert shards.metadata(4)["images"][0]["image_name"] == "bb22.png"
    assert shards.provenance(7)[0].endswith("cat")  # ImageFolder: the class folder is the shard
    # the loader mixes the three corpora by their token weights and packs whole documents
    batches = PackedBatches(shards, seq_len=64, batch_size=2, pad_id=vocab.pad, seed=1)
    it = iter(batches)
    for _ in range(30):
        next(it)
    tokens = [s.tokens for s in batches.streams]
    assert abs(tokens[2] / sum(tokens) - 0.5) < 0.1 and abs(tokens[0] / sum(tokens) - 0.25) < 0.1


def test_sampling_probabilities_of_a_curated_corpus_reach_the_loader(tmp_path, corpora, tokenizers):
    pairs = tmp_path / "pairs" / "pairs.jsonl"
    write_captions(pairs)
    lines = [json.loads(line) for line in pairs.read_text().splitlines()]
    lines[1]["sampling_probability"] = lines[3]["sampling_probability"] = 0.2  # as data/curate.py writes them
    pairs.write_text("".join(json.dumps(line) + "\n" for line in lines))
    run = new_run(tmp_path, tokenizers)
    encode(run, "--data.train_corpus", str(pairs), "--data.heldout_corpus", str(corpora["captions"]))
    shards = TokenShards(str(run / "tokens" / "train"))
    assert shards.sampling_probabilities() == pytest.approx([1, 0.2, 1, 0.2])
    assert shards.metadata(1)["sampling_probability"] == 0.2 and "sampling_probability" not in shards.metadata(0)
    assert TokenShards(str(run / "tokens" / "heldout")).sampling_probabilities() is None


def test_shapes_world_pretrains_on_its_documents_and_caption_pairs_by_share(tmp_path, tokenizers):
    run = new_run(tmp_path, tokenizers)
    world = ("--world.train_documents", "30", "--world.train_caption_pairs", "20", "--world.heldout_documents", "4")
    subprocess.run([sys.executable, str(ROOT / "data/make_world.py"), "--config", "debug", "--output_dir", str(run),
                    *world], cwd=ROOT, check=True, capture_output=True, env=ENV)  # fmt: skip
    encode(run, *world, "--world.pretrain_caption_share", "0.25")
    shards = TokenShards(str(run / "tokens" / "train"))
    assert shards.is_mixture and [w for _, w in shards.components] == [0.75, 0.25]
    summary = json.loads((run / "timings" / "encode.json").read_text())
    assert summary["train"]["documents_in"] == 30 + 20
    sources = {shards.provenance(i)[0] for i in range(len(shards))}
    assert any(s.endswith("captions-train.jsonl") for s in sources) and any(s.endswith(".parquet") for s in sources)
    # the world's mixture is set by its share; explicit weights need explicit corpora
    proc = subprocess.run(encode_cmd(run, "--world.pretrain_caption_share", "0.25", "--data.train_weights", "1,1"),
                          cwd=ROOT, capture_output=True, text=True, env=ENV)  # fmt: skip
    assert proc.returncode == 2 and "world.pretrain_caption_share" in proc.stderr, proc.stderr


def test_rerun_skips_finished_shards_and_redoes_the_rest_identically(tmp_path, corpora, tokenizers):
    run = new_run(tmp_path, tokenizers)
    args = ("--data.train_corpus", str(corpora["obelics"]), "--data.heldout_corpus", str(corpora["captions"]))
    encode(run, *args)
    reference = files_of(run / "tokens")
    train = run / "tokens" / "train"
    (train / "shard-00001.done.json").unlink()  # as if killed before shard 1 finished
    (train / "shard-00001-00000.tokens.npy").write_bytes(b"half")
    (train / "shard-00001-00000.tokens.npy.tmp").write_bytes(b"half")
    proc = encode(run, *args)
    assert "2 input shards were already done and skipped" in proc.stdout
    assert files_of(run / "tokens") == reference
    # a different reading policy does not reuse done shards
    proc = encode(run, *args, "--data.missing_image", "drop_image")
    assert "already done" not in proc.stdout


def test_bad_config_and_bad_corpus_are_one_line_errors(tmp_path, corpora, tokenizers):
    run = new_run(tmp_path, tokenizers)
    for extra, message in (
        (("--data.train_corpus", f"{corpora['obelics']},{corpora['mmc4']}", "--data.train_weights", "1"),
         "1 weights for 2 training corpora"),
        (("--data.train_corpus", str(tmp_path / "nothing")), "no corpus at"),
    ):  # fmt: skip
        proc = subprocess.run(encode_cmd(run, *extra), cwd=ROOT, capture_output=True, text=True, env=ENV)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr


def write_big_obelics(folder: Path, shards: int = 10, rows: int = 40) -> Path:
    folder.mkdir(parents=True)
    schema = pa.schema([("texts", pa.list_(pa.string())), ("images", pa.list_(pa.binary()))])
    for s in range(shards):
        table = [{"texts": [f"document {s}-{r} says hello", None, "and goodbye"],
                  "images": [None, image_bytes(1000 * s + r, size=(24, 24)), None]} for r in range(rows)]  # fmt: skip
        pq.write_table(pa.Table.from_pylist(table, schema=schema), folder / f"part-{s:03d}.parquet")
    return folder


@pytest.mark.slow
def test_kill_9_of_two_ranks_then_rerun_is_byte_identical(tmp_path, tokenizers):
    corpus = write_big_obelics(tmp_path / "big")
    args = ("--data.train_corpus", str(corpus), "--data.heldout_corpus", str(corpus / "part-000.parquet"),
            "--data.encode_batch_size", "8")  # fmt: skip
    clean = new_run(tmp_path, tokenizers, "clean")
    encode(clean, *args, ranks=2)

    killed = new_run(tmp_path, tokenizers, "killed")
    proc = subprocess.Popen(encode_cmd(killed, *args, ranks=2), cwd=ROOT, env=ENV, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    train = killed / "tokens" / "train"
    deadline = time.monotonic() + 300
    # kill as soon as some shards are finished: polling slowly on a loaded machine could miss the middle
    while len(list(train.glob("*.done.json"))) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "encode finished before it could be killed; make the corpus bigger"
    os.killpg(proc.pid, signal.SIGKILL)  # torchrun and both ranks, mid-write
    proc.wait()
    done = len(list(train.glob("*.done.json")))
    assert 2 <= done < 10 and not (train / "manifest.json").exists()
    for index in train.glob("*.index.npy"):  # a shard visible under its final name is complete
        name = str(index).removesuffix(".index.npy")
        np.load(name + ".tokens.npy"), np.load(name + ".docs.npy"), np.load(name + ".modality.npy")
    for record in train.glob("*.done.json"):
        json.loads(record.read_text())

    proc = encode(killed, *args, ranks=2)
    assert "already done and skipped" in proc.stdout
    assert files_of(killed / "tokens") == files_of(clean / "tokens")
    assert not list((killed / "tokens").rglob("*.tmp"))


@pytest.mark.slow
def test_real_corpora_pretokenize_and_train_in_the_debug_config(tmp_path, corpora, tokenizers):
    run = new_run(tmp_path, tokenizers)
    train = ",".join(str(corpora[k]) for k in ("obelics", "mmc4", "folder", "captions"))
    encode(run, "--data.train_corpus", train, "--data.heldout_corpus", str(corpora["captions"]))
    proc = subprocess.run([*TORCHRUN, str(ROOT / "train/pretrain.py"), "--config", "debug", "--output_dir", str(run),
                           "--training.steps", "3", "--training.seq_len", "128", "--checkpoint.interval", "3"],
                          cwd=ROOT, capture_output=True, text=True, env=ENV)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    steps = [json.loads(line)["step"] for line in (run / "pretrain" / "loss_log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]


def test_prefetch_keeps_order_and_reraises_reader_errors():
    from mmgen.data.reading import CorpusError
    from mmgen.tokenizers.pretokenize import prefetch

    assert list(prefetch(iter(range(50)), depth=3)) == list(range(50))

    def failing():
        yield 1
        raise CorpusError("shard.parquet: cannot read rows")

    it = prefetch(failing())
    assert next(it) == 1
    with pytest.raises(CorpusError, match="shard.parquet"):
        next(it)
    unfinished = prefetch(iter(range(1000)), depth=2)
    assert next(unfinished) == 0
    unfinished.close()  # the producer thread is released, not left blocked
