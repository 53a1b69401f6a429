"""Corpus readers: OBELICS, MMC4, ImageFolder, caption pairs; image decoding; curation; robustness."""

from __future__ import annotations

import io
import json
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from corpus_helpers import (image_bytes, mmc4_record, write_captions, write_imagefolder,
                            write_mmc4, write_obelics)  # fmt: skip
from mmgen.config.schema import DataConfig
from mmgen.data.corpus import detect_kind, open_corpus, read_documents
from mmgen.data.images import decode_image, fit_image
from mmgen.data.reading import CorpusError, ReadStats, SkipRow
from mmgen.data.token_shards import TokenShards, TokenShardWriter
from mmgen.retrieval.pairs import read_caption_pairs
from mmgen.tokenizers.pretokenize import pretokenize


def parts_of(doc):
    return [p if isinstance(p, str) else "<img>" for p in doc.parts]


# ----- OBELICS -----


def test_obelics_hub_schema_reads_into_the_right_documents(tmp_path):
    corpus = open_corpus(str(write_obelics(tmp_path / "obelics")))
    assert corpus.kind == "obelics" and len(corpus.shards) == 2
    docs = list(corpus)
    assert [parts_of(d) for d in docs] == [
        ["Intro text.", "<img>", "After the image."],
        ["<img>", "Caption below."],
        ["Only text here."],
        ["A second document.", "Two text positions."],
    ]
    assert docs[0].image_metadata[0]["alt_text"] == "an image"  # metadata JSON string, null at text positions
    assert docs[0].metadata["warc_filename"] == "crawl.warc.gz"  # general_metadata JSON string
    assert [(Path(d.metadata["source"]).name, d.metadata["row"]) for d in docs] == [
        ("shard-0.parquet", 0), ("shard-0.parquet", 1), ("shard-0.parquet", 2), ("shard-1.parquet", 2)]
    assert docs[0].images[0].size == (20, 14) and docs[0].images[0].mode == "RGB"
    # the URL image (network off) and the image missing on disk skip their documents, counted with shard/row
    assert corpus.stats.skipped == {"url_image": 1, "missing_image": 1}
    assert {(Path(s).name, r, why) for s, r, why in corpus.stats.examples} == {
        ("shard-1.parquet", 0, "url_image"), ("shard-1.parquet", 1, "missing_image")}


def test_drop_image_policy_keeps_documents_that_still_hold_an_image(tmp_path):
    (tmp_path / "ok.png").write_bytes(image_bytes(0))
    record = mmc4_record(0, images=[("ok.png", 0), ("absent.png", 1)], texts=["one", "two"])
    (tmp_path / "s.jsonl").write_text(json.dumps(record) + "\n")
    docs = list(open_corpus(str(tmp_path / "s.jsonl"), options=DataConfig(missing_image="skip_document")))
    assert docs == []
    corpus = open_corpus(str(tmp_path / "s.jsonl"), options=DataConfig(missing_image="drop_image"))
    docs = list(corpus)
    assert [parts_of(d) for d in docs] == [["<img>", "one two"]]
    assert corpus.stats.images_dropped == {"missing_image": 1}
    # interleaved documents that lose every image keep their text, counted
    obelics = open_corpus(str(write_obelics(tmp_path / "o")), options=DataConfig(missing_image="drop_image"))
    assert len(list(obelics)) == 6
    assert obelics.stats.skipped == {} and obelics.stats.text_only == 2
    assert obelics.stats.images_dropped == {"url_image": 1, "missing_image": 1}


# ----- MMC4 -----


@pytest.mark.parametrize("zipped", [False, True])
def test_mmc4_places_images_before_their_matched_sentence(tmp_path, zipped):
    path = write_mmc4(tmp_path / "mmc4", zipped=zipped)
    corpus = open_corpus(str(path))
    assert corpus.kind == "mmc4"
    docs = list(corpus)
    assert [parts_of(d) for d in docs] == [
        ["First.", "<img>", "Second.", "<img>", "Third."],  # bb22 matched sentence 1, aa11 sentence 2
        ["<img>", "Only sentence."],  # a null sentence is empty text
        ["No images at all. Still a document."],
    ]
    assert [m["image_name"] for m in docs[0].image_metadata] == ["bb22.png", "aa11.jpg"]
    assert docs[0].metadata["url"] == "http://example.com/doc0.html" and docs[1].metadata["could_have_url_duplicate"] == 1
    assert [d.metadata["row"] for d in docs] == [0, 1, 3]
    assert corpus.stats.skipped == {"missing_image": 1}  # missing.jpg, raw_url not fetched without network


def test_mmc4_zip_and_plain_give_identical_documents(tmp_path):
    plain = list(open_corpus(str(write_mmc4(tmp_path / "a", zipped=False))))
    zipped = list(open_corpus(str(write_mmc4(tmp_path / "b", zipped=True))))
    assert [parts_of(d) for d in plain] == [parts_of(d) for d in zipped]
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for x, y in zip(plain, zipped)
               for a, b in zip(x.images, y.images))  # fmt: skip


def test_mmc4_bad_records_are_skipped_by_reason(tmp_path):
    (tmp_path / "ok.png").write_bytes(image_bytes(0))
    good = mmc4_record(0, images=[("ok.png", 0)], texts=["fine"])
    lines = [
        json.dumps(good).encode(),
        b"\xff\xfe not utf-8",
        b"{not json",
        b"[1, 2]",
        json.dumps(mmc4_record(1, images=[("ok.png", 5)], texts=["index out of range"])).encode(),
        json.dumps({**good, "similarity_matrix": [[0.1, 0.2]]}).encode(),  # wrong shape
        json.dumps({**good, "text_list": "not a list"}).encode(),
        json.dumps(mmc4_record(2, images=[], texts=["\ud800 lone surrogate"])).encode(),
        b"   ",  # blank: not a record
        json.dumps(good).encode(),  # exact duplicate of the first
    ]
    (tmp_path / "s.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    corpus = open_corpus(str(tmp_path / "s.jsonl"), "mmc4")
    docs = list(corpus)
    assert len(docs) == 1 and corpus.stats.skipped == {
        "non_utf8": 2, "bad_json": 1, "bad_record": 2, "misaligned": 2, "duplicate_document": 1}
    assert corpus.stats.records_in == 9


def test_whole_file_errors_name_the_file(tmp_path):
    (tmp_path / "broken.jsonl.zip").write_bytes(b"PK not really a zip")
    with pytest.raises(CorpusError, match="broken.jsonl.zip"):
        list(open_corpus(str(tmp_path / "broken.jsonl.zip"), "mmc4"))
    (tmp_path / "other.jsonl").write_text(json.dumps({"foo": 1}) + "\n")
    with pytest.raises(CorpusError, match="other.jsonl: records have neither"):
        open_corpus(str(tmp_path / "other.jsonl"))
    with pytest.raises(CorpusError, match="no corpus at"):
        open_corpus(str(tmp_path / "absent"))
    with pytest.raises(CorpusError, match="unknown corpus kind"):
        open_corpus(str(tmp_path / "other.jsonl"), "webdataset")


# ----- ImageFolder and caption pairs -----


def test_imagefolder_becomes_caption_documents_with_labels(tmp_path):
    corpus = open_corpus(str(write_imagefolder(tmp_path / "folder")), image_size=16,
                         options=DataConfig(caption_order="text_first"))
    assert corpus.kind == "imagefolder" and corpus.labels == ["cat", "hot_dog"]
    docs = list(corpus)
    assert len(docs) == 6
    assert parts_of(docs[0]) == ["a photo of a cat", "<img>"] and parts_of(docs[3]) == ["a photo of a hot dog", "<img>"]
    assert docs[3].metadata["label"] == "hot_dog" and docs[3].metadata["label_index"] == 1
    assert docs[3].image_metadata == [{"label": "hot_dog", "label_index": 1}]
    assert docs[0].images[0].size == (16, 16)
    flipped = open_corpus(str(tmp_path / "folder"), options=DataConfig(caption_template="{label}!",
                                                                     caption_order="image_first"))  # fmt: skip
    assert parts_of(next(iter(flipped))) == ["<img>", "cat!"]


def test_both_caption_orders_by_default(tmp_path):
    """A user's labelled images teach label-given-image as well as image-given-label, each image in one order."""
    folder = write_imagefolder(tmp_path / "folder")
    orders = [tuple(parts_of(d)) for d in open_corpus(str(folder), image_size=16)]
    assert {o[0] == "<img>" for o in orders} == {True, False}
    assert orders == [tuple(parts_of(d)) for d in open_corpus(str(folder), image_size=16)]  # stable across reads
    pairs = [parts_of(d) for d in open_corpus(str(write_captions(tmp_path / "c" / "captions.jsonl")))]
    assert {p[0] == "<img>" for p in pairs} == {True, False}


def test_caption_pairs_and_the_shapes_world_captions(tmp_path):
    corpus = open_corpus(str(write_captions(tmp_path / "c" / "captions.jsonl")), options=DataConfig(caption_order="text_first"))
    docs = list(corpus)
    assert corpus.kind == "captions" and [parts_of(d) for d in docs][1] == ["caption number 1", "<img>"]
    assert docs[2].image_metadata == [{"i": 2}]


def test_caption_pairs_count_their_skips_and_a_file_of_none_is_an_error(tmp_path):
    path = write_captions(tmp_path / "c" / "captions.jsonl")
    lines = path.read_text().splitlines()
    lines[1] = json.dumps({"image": "../outside.png", "caption": "escapes the corpus folder"})
    path.write_text("\n".join(lines) + "\n")
    logged = []
    pairs = read_caption_pairs(str(path), log=logged.append)
    assert [caption for _, caption, _ in pairs] == ["caption number 0", "caption number 2", "caption number 3"]
    assert len(logged) == 1 and "skipped 1 (image_outside_corpus: 1)" in logged[0]
    # every row unreadable (e.g. a symlinked file whose images resolve outside its folder): one clear error
    path.write_text(json.dumps({"image": "../outside.png", "caption": "x"}) + "\n")
    with pytest.raises(CorpusError, match="no readable caption pair"):
        read_caption_pairs(str(path), log=logged.append)


def test_detect_kind(tmp_path):
    write_obelics(tmp_path / "o")
    write_mmc4(tmp_path / "m", zipped=True)
    write_imagefolder(tmp_path / "f")
    write_captions(tmp_path / "c" / "x.jsonl")
    assert detect_kind(str(tmp_path / "o")) == "obelics"
    assert detect_kind(str(tmp_path / "o" / "*.parquet")) == "obelics"
    assert detect_kind(str(tmp_path / "m")) == "mmc4"
    assert detect_kind(str(tmp_path / "f")) == "imagefolder"
    assert detect_kind(str(tmp_path / "c" / "x.jsonl")) == "captions"


# ----- images -----


def encoded(image: Image.Image, fmt="PNG", **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (30, 10), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, 10, 10))  # blue on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display needs a 90° clockwise turn
    out, size = decode_image(encoded(image, "JPEG", exif=exif.tobytes(), quality=95), max_pixels=10**6)
    assert out.size == (10, 30) and size == (10, 30)
    top = np.asarray(out)[2, 5]
    assert top[2] > 200 and top[0] < 60  # the blue end is now on top


def test_transparency_gray_and_palette_become_rgb():
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent red
    out, _ = decode_image(encoded(rgba), max_pixels=0)
    assert out.mode == "RGB" and np.asarray(out)[0, 0].tolist() == [255, 255, 255]  # onto white
    gray, _ = decode_image(encoded(Image.new("L", (4, 4), 77)), max_pixels=0)
    assert gray.mode == "RGB" and np.asarray(gray)[0, 0].tolist() == [77, 77, 77]
    palette = Image.new("RGB", (4, 4), (10, 200, 30)).convert("P", palette=Image.Palette.ADAPTIVE)
    out, _ = decode_image(encoded(palette), max_pixels=0)
    assert out.mode == "RGB" and np.asarray(out)[0, 0].tolist() == [10, 200, 30]
    la = Image.new("LA", (4, 4), (0, 0))
    assert np.asarray(decode_image(encoded(la), max_pixels=0)[0])[0, 0].tolist() == [255, 255, 255]


def test_bomb_limit_and_bad_bytes():
    big = encoded(Image.new("RGB", (300, 300)))
    with pytest.raises(SkipRow, match="image_too_large"):
        decode_image(big, max_pixels=300 * 300 - 1)
    for junk in (b"", b"not an image", big[: len(big) // 2]):
        with pytest.raises(SkipRow, match="undecodable_image"):
            decode_image(junk, max_pixels=10**8)


def test_resize_policies():
    wide = Image.new("RGB", (40, 20), (0, 0, 0))
    wide.paste((255, 255, 255), (0, 0, 10, 20))  # a white band on the far left
    assert fit_image(wide, 8, "stretch").size == (8, 8)
    cropped = np.asarray(fit_image(wide, 8, "center_crop"))
    assert cropped.max() < 30  # the central square never saw the band
    padded = np.asarray(fit_image(wide, 8, "pad"))
    assert padded[0, 4].tolist() == [255, 255, 255] and padded[4, 4].tolist() == [0, 0, 0]
    assert fit_image(wide, 0).size == (40, 20)


# ----- curation -----


def test_filters_and_dedup_count_every_reason(tmp_path):
    (tmp_path / "small.png").write_bytes(image_bytes(0, size=(4, 4)))
    (tmp_path / "tall.png").write_bytes(image_bytes(1, size=(10, 60)))
    (tmp_path / "ok.png").write_bytes(image_bytes(2, size=(20, 20)))
    (tmp_path / "ok_copy.png").write_bytes(image_bytes(2, size=(20, 20)))
    records = [
        {"image": "ok.png", "caption": "a perfectly fine caption"},
        {"image": "ok_copy.png", "caption": "same image bytes, other caption"},  # duplicate image → no images
        {"image": "small.png", "caption": "an image that is too small"},
        {"image": "tall.png", "caption": "an image that is far too tall"},
        {"image": "ok.png", "caption": "short"},
        {"image": "ok.png", "caption": "a perfectly fine caption"},  # exact duplicate document
    ]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    options = DataConfig(min_text_chars=10, min_image_side=8, max_aspect_ratio=3.0, caption_order="text_first")
    corpus = open_corpus(str(tmp_path / "c.jsonl"), options=options)
    assert len(list(corpus)) == 1
    assert corpus.stats.skipped == {"no_images_left": 3, "text_too_short": 1, "duplicate_document": 1}
    assert corpus.stats.images_dropped == {"duplicate_image": 1, "image_too_small": 1, "bad_aspect_ratio": 1}
    assert "images dropped" in corpus.stats.summary()
    nodedup = open_corpus(str(tmp_path / "c.jsonl"), options=DataConfig(dedup_documents=False, dedup_images=False))
    assert len(list(nodedup)) == 6


def test_read_shard_is_its_own_dedup_scope(tmp_path):
    """Each shard read alone yields the same documents however the shards are scheduled (resumable encode)."""
    write_mmc4(tmp_path / "m", zipped=False)
    path = tmp_path / "m" / "docs_shard_0_v2.jsonl"
    (tmp_path / "m" / "docs_shard_1_v2.jsonl").write_bytes(path.read_bytes())  # every document again
    corpus = open_corpus(str(tmp_path / "m"))
    assert len(list(corpus.read_shard(1))) == len(list(corpus.read_shard(0))) == 3
    assert len(list(corpus)) == 3 and corpus.stats.skipped == {"missing_image": 1, "duplicate_document": 4}


# ----- robustness: every record is encoded or counted, whatever the bytes -----

GOOD_PNG = image_bytes(7, size=(12, 9))
GOOD_JPEG = image_bytes(8, size=(12, 9), fmt="JPEG")


@st.composite
def image_files(draw):
    base = draw(st.sampled_from([GOOD_PNG, GOOD_JPEG]))
    kind = draw(st.sampled_from(["good", "good", "good", "truncated", "flipped", "random", "empty"]))
    if kind == "truncated":
        return base[: draw(st.integers(0, len(base) - 1))]
    if kind == "flipped":
        data = bytearray(base)
        for _ in range(draw(st.integers(1, 8))):
            data[draw(st.integers(0, len(data) - 1))] ^= draw(st.integers(1, 255))
        return bytes(data)
    if kind == "random":
        return draw(st.binary(max_size=64))
    return base if kind == "good" else b""


json_values = st.recursive(st.none() | st.booleans() | st.integers(-3, 6) | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3), max_leaves=6)  # fmt: skip


@st.composite
def mmc4_lines(draw, names):
    """Mostly well-formed MMC4 records (so images get decoded and encoded), some malformed, some garbage."""
    kind = draw(st.sampled_from(["record"] * 6 + ["garbage", "json"]))
    if kind == "garbage":
        return draw(st.binary(min_size=1, max_size=20).filter(lambda b: b"\n" not in b and b"\r" not in b and b.strip()))
    if kind == "json":
        return json.dumps(draw(json_values)).encode()

    def sometimes_bad(good, bad):
        return draw(good) if draw(st.integers(0, 9)) else draw(bad)

    texts = sometimes_bad(st.lists(st.one_of(st.text(min_size=1, max_size=12), st.none()), min_size=1, max_size=4),
                          json_values)  # fmt: skip
    n_texts = len(texts) if isinstance(texts, list) else 1
    info = [
        {"image_name": sometimes_bad(st.sampled_from(names), st.one_of(st.none(), st.integers())),
         "matched_text_index": sometimes_bad(st.integers(0, max(n_texts - 1, 0)), st.one_of(st.integers(-1, 9), st.text(max_size=2))),
         "raw_url": draw(st.sampled_from([None, "http://example.com/x.jpg"])), "matched_sim": 0.3}
        for _ in range(draw(st.integers(0, 3)))
    ]  # fmt: skip
    record = {"text_list": texts, "image_info": info, "url": "u", "could_have_url_duplicate": 0}
    if draw(st.booleans()):
        record["similarity_matrix"] = sometimes_bad(st.just([[0.0] * n_texts for _ in info]), json_values)
    if not draw(st.integers(0, 9)):
        del record[draw(st.sampled_from(sorted(record)))]
    return json.dumps(record).encode()


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_encode_never_crashes_and_accounts_for_every_record(data, tiny_tokenizer):
    tokenizer = tiny_tokenizer
    names = [f"im{i}.png" for i in range(4)] + ["absent.png"]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name in names[:-1]:
            (root / name).write_bytes(data.draw(image_files()))
        lines = data.draw(st.lists(mmc4_lines(names), min_size=1, max_size=8))
        zipped = data.draw(st.booleans())
        body = b"\n".join(lines) + b"\n"
        if zipped:
            with zipfile.ZipFile(root / "s.jsonl.zip", "w") as archive:
                archive.writestr("s.jsonl", body)
        else:
            (root / "s.jsonl").write_bytes(body)
        options = DataConfig(missing_image=data.draw(st.sampled_from(["skip_document", "drop_image"])))
        corpus = open_corpus(str(root / ("s.jsonl.zip" if zipped else "s.jsonl")), "mmc4", options=options,
                             image_size=16)  # fmt: skip
        writer = TokenShardWriter(str(root / "tokens"), vocab_size=tokenizer.vocab.size, tokens_per_shard=200,
                                  vocab=tokenizer.vocab)  # fmt: skip
        counts = pretokenize(corpus, tokenizer, writer, image_batch_size=3, log=lambda _: None)
        writer.close()
        encoded_docs = counts.get("documents", 0)
        assert encoded_docs == corpus.stats.documents_read
        assert encoded_docs + corpus.stats.total_skipped == len(lines)
        assert len(TokenShards(str(root / "tokens"))) == encoded_docs
        event(f"documents encoded: {min(encoded_docs, 2)}")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(images=st.lists(st.one_of(image_files(), st.none()), min_size=1, max_size=4),
       texts=st.lists(st.one_of(st.text(max_size=10), st.none()), min_size=1, max_size=4))
def test_obelics_rows_with_corrupted_image_bytes(images, texts, tiny_tokenizer):
    import pyarrow as pa
    import pyarrow.parquet as pq

    tokenizer = tiny_tokenizer
    n = min(len(images), len(texts))
    rows = [{"texts": texts[: n - i] + [None] * i, "images": [None] * (n - i) + images[:i]} for i in range(n + 1)]
    schema = pa.schema([("texts", pa.list_(pa.string())), ("images", pa.list_(pa.binary()))])
    with tempfile.TemporaryDirectory() as tmp:
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), Path(tmp) / "x.parquet")
        corpus = open_corpus(str(Path(tmp) / "x.parquet"), image_size=16)
        writer = TokenShardWriter(str(Path(tmp) / "t"), vocab_size=tokenizer.vocab.size, tokens_per_shard=100)
        counts = pretokenize(corpus, tokenizer, writer, image_batch_size=2, log=lambda _: None)
        assert counts.get("documents", 0) + corpus.stats.total_skipped == len(rows)


def test_read_documents_reads_comma_separated_corpora_in_order(tmp_path):
    write_obelics(tmp_path / "o")
    write_captions(tmp_path / "c" / "pairs.jsonl")
    stats = ReadStats()
    docs = list(read_documents(f"{tmp_path / 'o'}, {tmp_path / 'c' / 'pairs.jsonl'}", stats=stats))
    assert len(docs) == 4 + 4 and parts_of(docs[-1]) == ["<img>", "caption number 3"]  # odd row: image first
    assert stats.documents_read == 8 and stats.skipped == {"url_image": 1, "missing_image": 1}
    with pytest.raises(CorpusError, match="no corpus at"):
        read_documents(f"{tmp_path / 'o'},{tmp_path / 'nope'}")


def test_http_images_only_with_network_allowed_with_retries(tmp_path):
    """A server on localhost stands in for the web: no test touches the real network."""
    import http.server
    import threading

    hits = {"/flaky.png": 0, "/dead.png": 0}
    pngs = {"/ok.png": image_bytes(5), "/flaky.png": image_bytes(6)}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            if self.path in hits:
                hits[self.path] += 1
            if self.path == "/ok.png" or (self.path == "/flaky.png" and hits[self.path] > 1):
                self.send_response(200)
                self.end_headers()
                self.wfile.write(pngs[self.path])
            else:
                self.send_error(500)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        records = [mmc4_record(i, images=[(f"{name}.png", 0)], texts=[f"doc {i}"]) for i, name in enumerate(["ok", "flaky", "dead"])]
        for r in records:
            r["image_info"][0]["raw_url"] = f"{base}/{r['image_info'][0]['image_name']}"
            r["image_info"][0]["image_name"] = "not_downloaded.png"
        (tmp_path / "s.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        offline = open_corpus(str(tmp_path / "s.jsonl"))
        assert list(offline) == [] and offline.stats.skipped == {"missing_image": 3}
        online = open_corpus(str(tmp_path / "s.jsonl"), options=DataConfig(allow_network=True, network_retries=1,
                                                                          network_timeout=5))  # fmt: skip
        docs = list(online)
        assert [d.metadata["row"] for d in docs] == [0, 1] and online.stats.skipped == {"fetch_failed": 1}
        assert hits == {"/flaky.png": 2, "/dead.png": 2}  # one retry each
    finally:
        server.shutdown()
