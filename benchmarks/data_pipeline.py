"""Data-pipeline throughput: read, read + encode, and the packing loader vs what training consumes.

    .venv/bin/python benchmarks/data_pipeline.py [--run outputs/demo] [--documents 400] [--seconds 3]

Everything is measured in one run on this machine, so the ratios hold even when the absolute numbers are
noisy (shared CPUs):

- read: documents/s of ``open_corpus`` over synthetic OBELICS parquet (embedded JPEGs) and MMC4
  ``.jsonl.zip`` (images beside the shard), images decoded and fitted to the tokenizer's size;
- read + encode: documents/s and tokens/s of the same through ``pretokenize`` (VQ encoding in batches);
- loader: tokens/s ``PackedBatches`` delivers at the demo's sequence length and batch size;
- trainer: tokens/s one demo-sized training step consumes (forward, backward, AdamW) in this process,
  and, when ``--run`` holds a finished demo pretraining, the rate its loss log recorded (2 ranks).

Tokenizers come from ``--run`` when it has them (the demo's), else a demo-sized VQ-VAE with random
weights (same compute) and a SentencePiece model trained here.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image

from figures import Figure

from mmgen.config import RunPaths
from mmgen.config.presets import demo
from mmgen.config.schema import TextTokenizerConfig
from mmgen.data.corpus import open_corpus
from mmgen.data.packing import IGNORE_INDEX, PackedBatches
from mmgen.data.token_shards import TokenShards, TokenShardWriter
from mmgen.device import bf16_supported
from mmgen.model.transformer import Transformer, with_image_layout
from mmgen.tokenizers.image import ImageTokenizer
from mmgen.tokenizers.pretokenize import pretokenize
from mmgen.tokenizers.text import TextTokenizer, train_text_tokenizer
from mmgen.tokenizers.vocab import MultimodalTokenizer, Vocab
from mmgen.tokenizers.vqvae import VQVAE

WORDS = "red green blue circle square triangle small large left right above below beside the a and of".split()


def sentence(rng: np.random.Generator) -> str:
    return " ".join(rng.choice(WORDS, size=int(rng.integers(6, 16)))).capitalize() + "."


def jpeg(rng: np.random.Generator, side: int = 96) -> bytes:
    base = rng.integers(0, 256, size=(side // 8, side // 8, 3), dtype=np.uint8)
    image = Image.fromarray(base, "RGB").resize((side, side), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def write_corpora(root: Path, documents: int) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(documents):
        texts, images = [], []
        for _ in range(int(rng.integers(1, 3))):
            texts += [sentence(rng), None]
            images += [None, jpeg(rng)]
        texts.append(" ".join(sentence(rng) for _ in range(3)))
        images.append(None)
        rows.append({"texts": texts, "images": images})
    schema = pa.schema([("texts", pa.list_(pa.string())), ("images", pa.list_(pa.binary()))])
    (root / "obelics").mkdir()
    half = documents // 2
    for i, part in enumerate((rows[:half], rows[half:])):
        pq.write_table(pa.Table.from_pylist(part, schema=schema), root / "obelics" / f"part-{i}.parquet")
    (root / "mmc4").mkdir()
    lines = []
    for d in range(documents):
        texts = [sentence(rng) for _ in range(int(rng.integers(3, 7)))]
        info = []
        for k in range(int(rng.integers(1, 3))):
            name = f"{d:05d}{k}.jpg"
            (root / "mmc4" / name).write_bytes(jpeg(rng))
            info.append({"image_name": name, "raw_url": f"http://x/{name}", "matched_sim": 0.3,
                         "matched_text_index": int(rng.integers(0, len(texts))), "face_detections": None})  # fmt: skip
        lines.append(json.dumps({"text_list": texts, "image_info": info, "url": f"http://x/{d}",
                                 "similarity_matrix": [[0.2] * len(texts)] * len(info), "could_have_url_duplicate": 0}))
    with zipfile.ZipFile(root / "mmc4" / "docs_shard_0_v2.jsonl.zip", "w") as archive:
        archive.writestr("docs_shard_0_v2.jsonl", "\n".join(lines) + "\n")
    return {"obelics": root / "obelics", "mmc4": root / "mmc4"}


def load_tokenizer(run: str | None, scratch: Path) -> tuple[MultimodalTokenizer, str]:
    paths = RunPaths(run or str(scratch / "none"))
    try:
        text, origin = TextTokenizer.load(paths.text_tokenizer), f"text tokenizer of {run}"
    except (OSError, ValueError):
        rng = np.random.default_rng(1)
        text = train_text_tokenizer([sentence(rng) for _ in range(2000)], TextTokenizerConfig(),
                                    str(scratch / "text.model"), log=lambda _: None)  # fmt: skip
        origin = "a text tokenizer trained here"
    try:
        image = ImageTokenizer.load(paths.image_tokenizer)
        origin += f", image tokenizer of {run}"
    except (OSError, ValueError):  # none there, or one of an older layout
        cfg = demo().image_tokenizer
        torch.manual_seed(0)
        image = ImageTokenizer(model=VQVAE.from_config(cfg), config=cfg)
        origin += ", a demo-sized VQ-VAE with random weights (same compute)"
    vocab = Vocab.build(text_vocab_size=text.vocab_size, codebook_size=image.codebook_size, grid=image.grid)
    return MultimodalTokenizer(vocab, text, image), origin


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def loader_rate(folder: str, pad: int, seconds: float, seq_len: int, batch: int) -> tuple[float, float]:
    batches = PackedBatches(TokenShards(folder), seq_len=seq_len, batch_size=batch, pad_id=pad, seed=0)
    it = iter(batches)
    next(it)
    positions = real = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        _, labels = next(it)
        positions += labels.numel()
        real += int((labels != IGNORE_INDEX).sum())
    elapsed = time.perf_counter() - start
    return positions / elapsed, real / elapsed


def trainer_rate(vocab: Vocab, steps: int, seq_len: int, batch: int) -> float:
    """Token positions per second of a demo-sized training step in this process."""
    torch.manual_seed(0)
    model = Transformer(with_image_layout(demo().model, vocab), vocab.size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    tokens = torch.randint(0, vocab.size, (batch, seq_len + 1))
    document_ids = torch.zeros(batch, seq_len, dtype=torch.long)
    bf16 = bf16_supported("cpu")

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(tokens[:, :-1], document_ids=document_ids)
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), tokens[:, 1:].flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up
    _, elapsed = timed(lambda: [step() for _ in range(steps)])
    return steps * batch * seq_len / elapsed


def demo_recorded_rate(run: str | None) -> float | None:
    """Real (label-bearing) tokens per second the demo trainer consumed, all ranks, from its loss log."""
    log = Path(run or "") / "pretrain" / "loss_log.jsonl"
    if not run or not log.exists():
        return None
    records = [json.loads(line) for line in log.read_text().splitlines()]
    if len(records) < 3:
        return None
    # each record counts the tokens since the previous one; skip the first (start-up)
    tokens = sum(r["text_tokens"] + r["image_tokens"] for r in records[2:])
    return tokens / (records[-1]["time"] - records[1]["time"])


def encode_rates(run: str | None, documents: int, scratch: Path, log=print) -> tuple[list[dict], MultimodalTokenizer]:
    """Per synthetic corpus: read docs/s, read + encode docs/s and tokens/s, and the encoded token folder."""
    tokenizer, origin = load_tokenizer(run, scratch)
    corpora = write_corpora(scratch, documents)
    size = tokenizer.image_tok.image_size
    log(f"tokenizers: {origin}; images fitted to {size}x{size}; {documents} documents per corpus")
    rates = []
    for kind, url in corpora.items():
        corpus = open_corpus(str(url), image_size=size)
        docs, read_s = timed(lambda: sum(1 for _ in corpus))
        out = str(scratch / f"tokens-{kind}")
        writer = TokenShardWriter(out, vocab_size=tokenizer.vocab.size, tokens_per_shard=200_000, vocab=tokenizer.vocab)
        with torch.no_grad():
            counts, enc_s = timed(lambda: pretokenize(open_corpus(str(url), image_size=size), tokenizer, writer,
                                                      log=lambda _: None))  # fmt: skip
        writer.close()
        rates.append({"corpus": kind, "read_docs_per_s": docs / read_s, "encode_docs_per_s": counts["documents"] / enc_s,
                      "encode_tokens_per_s": counts["tokens"] / enc_s, "tokens": counts["tokens"], "folder": out})
    return rates, tokenizer


def pipeline_figures(run: str | None, documents: int, seconds: float, demand: float, log=print) -> list[Figure]:
    """Read, encode and loader rates of the demo's shapes against ``demand``: the token positions/s
    the demo's trainer consumes on this machine (all ranks)."""
    training = demo().training
    with tempfile.TemporaryDirectory(prefix="mmgen-bench-") as tmp:
        rates, tokenizer = encode_rates(run, documents, Path(tmp), log)
        positions, real = loader_rate(rates[0]["folder"], tokenizer.vocab.pad, seconds, training.seq_len,
                                      training.local_batch_size)
    figures = [Figure("6 data", f"{r['corpus']} read + encode tokens/s", r["encode_tokens_per_s"], "tokens/s",
                      "trainer demand", demand, note=f"read alone {r['read_docs_per_s']:,.0f} docs/s, "
                      f"read + encode {r['encode_docs_per_s']:,.0f} docs/s") for r in rates]
    figures.append(Figure("6 data", "loader token positions/s", positions, "tokens/s", "trainer demand", demand,
                          note=f"{real:,.0f} real tokens/s; seq_len {training.seq_len}, "
                               f"batch {training.local_batch_size}"))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="outputs/demo", help="run folder with tokenizers and a demo loss log")
    parser.add_argument("--documents", type=int, default=400, help="documents per synthetic corpus")
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds of loader measurement")
    parser.add_argument("--train_steps", type=int, default=3, help="timed training steps of the baseline")
    args = parser.parse_args()
    torch.set_grad_enabled(True)
    training = demo().training  # the demo's sequence length and per-rank batch
    with tempfile.TemporaryDirectory(prefix="mmgen-bench-") as tmp:
        print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        rates, tokenizer = encode_rates(args.run, args.documents, Path(tmp))
        print(f"{'corpus':8} {'read docs/s':>12} {'read+encode docs/s':>19} {'tokens/s':>10} {'tokens':>8}")
        for r in rates:
            print(f"{r['corpus']:8} {r['read_docs_per_s']:12.0f} {r['encode_docs_per_s']:19.0f} "
                  f"{r['encode_tokens_per_s']:10.0f} {r['tokens']:8d}")  # fmt: skip
        pad, folder = tokenizer.vocab.pad, rates[0]["folder"]
        # the loader is timed right before and after the trainer, and the slower figure kept, so a burst of
        # load from other processes on a shared machine cannot flatter the ratio
        before = loader_rate(folder, pad, args.seconds, training.seq_len, training.local_batch_size)
        train = trainer_rate(tokenizer.vocab, args.train_steps, training.seq_len, training.local_batch_size)
        after = loader_rate(folder, pad, args.seconds, training.seq_len, training.local_batch_size)
        positions, real = min(before, after)
        recorded = demo_recorded_rate(args.run)
        print(f"loader:  {positions:,.0f} token positions/s ({real:,.0f} real tokens/s), "
              f"seq_len {training.seq_len}, batch {training.local_batch_size}")  # fmt: skip
        print(f"trainer: {train:,.0f} token positions/s (demo-sized step, 1 process, this run)")
        print(f"ratio loader / trainer (this run): {positions / train:,.1f}x")
        print(f"load average at end: {os.getloadavg()[0]:.1f}")
        if recorded:
            print(f"demo trainer recorded {recorded:,.0f} real tokens/s (all ranks); "
                  f"ratio loader real tokens / demo trainer: {real / recorded:,.1f}x")  # fmt: skip


if __name__ == "__main__":
    main()
