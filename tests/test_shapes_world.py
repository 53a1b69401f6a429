"""Shapes-world generator, OBELICS reader and the CLI error wrapper."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from mmgen.cli import run_cli
from mmgen.config import ConfigError, RunPaths
from mmgen.config.schema import WorldConfig
from mmgen.data.obelics import CorpusError, ReadStats, read_obelics
from mmgen.data.shapes_world import (
    BACKGROUNDS,
    COLORS,
    OBELICS_SCHEMA,
    describe_scene,
    generate_world,
    parse_background,
    parse_caption,
    png_bytes,
    random_scene,
    render_scene,
    scene_split,
    shape_mask,
)

REPO = Path(__file__).resolve().parents[1]


def small_world(**overrides) -> WorldConfig:
    cfg = WorldConfig(
        train_documents=30, heldout_documents=8, train_caption_pairs=12, heldout_caption_pairs=4,
        documents_per_shard=16, max_images_per_document=3,
    )  # fmt: skip
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> tuple[RunPaths, dict]:
    paths = RunPaths(str(tmp_path_factory.mktemp("world")))
    return paths, generate_world(small_world(), paths)


def files_of(root: str) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(Path(root).rglob("*")) if p.is_file()}


def test_same_seed_writes_identical_bytes_and_other_seed_differs(world, tmp_path):
    paths, counts = world
    again = RunPaths(str(tmp_path / "again"))
    assert generate_world(small_world(), again) == counts
    assert files_of(paths.corpus_dir) == files_of(again.corpus_dir)
    other = RunPaths(str(tmp_path / "other"))
    generate_world(small_world(seed=1), other)
    first = pq.read_table(Path(paths.corpus_split("train")) / "shard-00000.parquet")
    assert first != pq.read_table(Path(other.corpus_split("train")) / "shard-00000.parquet")


def test_counts_and_shard_layout(world):
    paths, counts = world
    assert counts["train_documents"] == 30 and counts["heldout_documents"] == 8
    assert counts["train_shards"] == 2 and counts["heldout_shards"] == 1
    assert sorted(p.name for p in Path(paths.corpus_split("train")).iterdir()) == [
        "shard-00000.parquet",
        "shard-00001.parquet",
    ]
    assert pq.read_table(Path(paths.corpus_split("train")) / "shard-00001.parquet").num_rows == 14


def test_rows_follow_the_obelics_schema_exactly(world):
    paths, counts = world
    images = 0
    for shard in sorted(Path(paths.corpus_split("train")).glob("*.parquet")):
        table = pq.read_table(shard)
        assert table.schema.remove_metadata() == OBELICS_SCHEMA
        for row in table.to_pylist():
            texts, imgs, metadata = row["texts"], row["images"], json.loads(row["metadata"])
            assert len(texts) == len(imgs) == len(metadata) >= 2
            for text, image, meta in zip(texts, imgs, metadata):
                assert (text is None) != (image is None)
                assert (meta is None) == (image is None)
                if text is not None:
                    assert text.strip() == text and text
            # text parts are merged, so two texts never sit side by side
            assert all(a is None or b is None for a, b in zip(texts, texts[1:]))
            general = json.loads(row["general_metadata"])
            assert set(general) == {"url", "split", "doc_id"} and general["split"] == "train"
            images += sum(image is not None for image in imgs)
    assert images == counts["train_document_images"]


def test_metadata_is_the_ground_truth_of_each_image(world):
    paths, _ = world
    for row in pq.read_table(paths.corpus_split("heldout")).to_pylist():
        for image, scene in zip(row["images"], json.loads(row["metadata"])):
            if image is None:
                continue
            pixels = np.array(Image.open(io.BytesIO(image)).convert("RGB"))
            assert np.array_equal(pixels, np.array(render_scene(scene, 32)))
            # read it back independently of render_scene: each shape's mask in its colour, rest background
            painted = np.zeros(pixels.shape[:2], dtype=bool)
            for s in scene["shapes"]:
                r = s["r"]
                box = (slice(s["cy"] - r, s["cy"] + r + 1), slice(s["cx"] - r, s["cx"] + r + 1))
                is_color = (pixels[box] == COLORS[s["color"]]).all(-1)
                assert np.array_equal(is_color, shape_mask(s["shape"], s["r"]))
                assert not painted[box].any(), "shapes overlap"
                painted[box] = True
            assert (pixels[~painted] == BACKGROUNDS[scene["background"]]).all()
            assert scene_split(scene) == "heldout"


def test_shapes_are_distinct_and_separated():
    sizes = {"small": 2, "large": 4}
    shapes = ("circle", "square", "triangle")
    masks = {(shape, size): shape_mask(shape, r) for shape in shapes for size, r in sizes.items()}
    areas = {key: int(m.sum()) for key, m in masks.items()}
    assert len(set(areas.values())) == len(areas)  # shape and size both readable from the pixel count
    assert max(areas[(s, "small")] for s in shapes) < min(areas[(s, "large")] for s in shapes)


def test_caption_pairs_match_their_images(world):
    paths, counts = world
    jsonl = Path(paths.caption_pairs("train"))
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert len(lines) == counts["train_caption_pairs"] == 12
    for line in lines:
        image = Image.open(jsonl.parent / line["image"]).convert("RGB")
        assert np.array_equal(np.array(image), np.array(render_scene(line["metadata"], 32)))
        assert line["caption"] == describe_scene(line["metadata"])
        assert scene_split(line["metadata"]) == "train"


def test_parse_caption_inverts_describe_scene():
    rng = np.random.default_rng(0)
    cfg = WorldConfig()
    for _ in range(200):
        scene = random_scene(rng, cfg)
        caption = describe_scene(scene)
        keys = ("shape", "color", "size", "position")
        assert parse_caption(caption) == [{k: s[k] for k in keys} for s in scene["shapes"]]
        assert parse_background(caption) == scene["background"]
    assert describe_scene(
        {"background": "white", "shapes": [
            {"shape": "circle", "color": "red", "size": "large", "position": "top left"},
            {"shape": "square", "color": "blue", "size": "small", "position": "center"},
        ]}
    ) == "a large red circle at the top left and a small blue square in the center, on a white background"  # fmt: skip
    assert parse_caption("A small red circle.") == [
        {"shape": "circle", "color": "red", "size": "small", "position": None}
    ]
    empty = describe_scene({"background": "black", "shapes": []})
    assert empty == "no shapes, on a black background"
    assert parse_caption(empty) == [] and parse_background(empty) == "black"


def test_reader_round_trip(world):
    paths, counts = world
    stats = ReadStats()
    docs = list(read_obelics(paths.corpus_split("train"), stats=stats))
    assert len(docs) == stats.documents_read == counts["train_documents"] and not stats.skipped
    table = pq.read_table(paths.corpus_split("train"))
    for index, (doc, row) in enumerate(zip(docs, table.to_pylist())):
        assert doc.metadata["row"] == index % 16 and doc.metadata["source"].endswith(f"shard-{index // 16:05d}.parquet")
        assert doc.metadata["doc_id"] == index
        assert doc.texts == [t for t in row["texts"] if t is not None]
        scenes = [m for m in json.loads(row["metadata"]) if m is not None]
        assert doc.image_metadata == scenes
        for image, scene in zip(doc.images, scenes):
            assert image.mode == "RGB" and np.array_equal(np.array(image), np.array(render_scene(scene, 32)))
        assert [isinstance(p, str) for p in doc.parts] == [t is not None for t in row["texts"]]


def test_memory_filesystem_and_globs():
    paths = RunPaths("memory://shapes-world-test")
    generate_world(small_world(train_documents=5, heldout_documents=3, train_caption_pairs=2), paths)
    docs = list(read_obelics(paths.corpus_split("heldout") + "/shard-*.parquet"))
    assert len(docs) == 3 and docs[0].metadata["source"].startswith("memory://")


def write_shard(path: Path, rows: list[dict], schema: pa.Schema = OBELICS_SCHEMA) -> None:
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)


def test_bad_rows_are_skipped_and_counted(tmp_path):
    png = png_bytes(render_scene({"background": "white", "shapes": []}))
    Image.new("RGB", (4, 4), "red").save(tmp_path / "side.png")

    def row(texts, images, metadata=None):
        return {"texts": texts, "images": images, "metadata": metadata, "general_metadata": '{"url": "x"}'}

    rows = [
        row(["hello", None], [None, png], json.dumps([None, {"k": 1}])),  # good
        row(["a", None], [None, b"not an image"]),  # undecodable
        row(["a"], [None, png]),  # misaligned lengths
        row(["a", "b"], [None, png]),  # text and image at one position
        row([], []),  # empty
        row([None, None], [None, None]),  # all null
        row(["a"], [None], "{not json"),  # bad metadata
    ]
    write_shard(tmp_path / "a-bytes.parquet", rows)
    # the published OBELICS form: images as strings (URLs, or here paths relative to the shard)
    by_path = [
        row([None], ["https://example.com/x.png"]),  # URL, not fetched
        row(["caption", None], [None, "side.png"]),  # good
        row([None], ["nowhere.png"]),  # missing file
    ]
    string_schema = OBELICS_SCHEMA.set(1, pa.field("images", pa.list_(pa.string())))
    write_shard(tmp_path / "b-paths.parquet", by_path, string_schema)
    stats = ReadStats()
    docs = list(read_obelics(str(tmp_path), stats=stats))
    assert [(Path(d.metadata["source"]).name, d.metadata["row"]) for d in docs] == [
        ("a-bytes.parquet", 0),
        ("b-paths.parquet", 1),
    ]
    assert docs[0].image_metadata == [{"k": 1}] and docs[0].metadata["url"] == "x"
    assert docs[1].images[0].size == (4, 4) and docs[1].image_metadata == [{}]
    assert stats.documents_read == 2
    assert stats.skipped == {
        "undecodable_image": 1, "misaligned": 2, "empty_document": 1, "all_null": 1,
        "url_image": 1, "missing_image": 1, "bad_metadata": 1,
    }  # fmt: skip
    assert (str(tmp_path / "a-bytes.parquet"), 1, "undecodable_image") in stats.examples
    assert "skipped 8" in stats.summary()


def test_whole_file_errors_name_the_file(tmp_path):
    (tmp_path / "junk.parquet").write_text("this is not parquet")
    with pytest.raises(CorpusError, match="junk.parquet"):
        list(read_obelics(str(tmp_path / "junk.parquet")))
    write_shard(tmp_path / "cols.parquet", [{"texts": ["a"]}], pa.schema([("texts", pa.list_(pa.string()))]))
    with pytest.raises(CorpusError, match=r"cols.parquet lacks OBELICS column\(s\) images"):
        list(read_obelics(str(tmp_path / "cols.parquet")))
    flat = pa.schema([("texts", pa.string()), ("images", pa.string())])
    write_shard(tmp_path / "typed.parquet", [{"texts": "a", "images": "b"}], flat)
    with pytest.raises(CorpusError, match="typed.parquet: column 'texts'"):
        list(read_obelics(str(tmp_path / "typed.parquet")))
    with pytest.raises(CorpusError, match="no parquet shards at"):
        read_obelics(str(tmp_path / "empty-*.parquet"))
    assert issubclass(CorpusError, ValueError)


def test_run_cli_prints_one_line_and_exits_2(capsys):
    def bad():
        raise CorpusError("no parquet shards at\nsomewhere")

    with pytest.raises(SystemExit) as exit_info:
        run_cli(bad)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: no parquet shards at somewhere\n"
    with pytest.raises(ZeroDivisionError):  # bugs keep their traceback
        run_cli(lambda: 1 / 0)
    with pytest.raises(ConfigError):
        random_scene(np.random.default_rng(0), WorldConfig(max_shapes_per_image=10))


def test_make_world_cli(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "data/make_world.py", "--config", "debug", "--output_dir", str(out)]
    done = subprocess.run(cmd + ["--world.train_documents", "7"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "train_documents: 7" in done.stdout
    assert json.loads((out / "timings" / "world.json").read_text())["seconds"] > 0
    assert len(list(read_obelics(str(out / "corpus" / "train")))) == 7
    failed = subprocess.run(cmd + ["--world.image_size", "4"], cwd=REPO, capture_output=True, text=True)
    assert failed.returncode == 2 and failed.stderr.count("\n") == 1
    assert failed.stderr.startswith("error: world.image_size")
