"""Curation: each step of the pipeline, the corpus writers in every format, data/curate.py end to end, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bad_inputs import assert_one_error_line, run_stage
from corpus_helpers import make_tokenizers, write_captions, write_imagefolder, write_mmc4, write_obelics
from mmgen.config.schema import CurateConfig, DataConfig
from mmgen.data.concepts import balance_by_concept, match_concepts, read_concepts, sampling_probabilities
from mmgen.data.corpus import open_corpus
from mmgen.data.corpus_writer import write_corpus
from mmgen.data.document import Document
from mmgen.data.reading import SAMPLING_KEY, CorpusError
from mmgen.data.shapes_world import describe_scene
from mmgen.retrieval.corpus_curation import Pipeline
from mmgen.retrieval.curation import repeats_earlier, score_threshold
from mmgen.retrieval.encoder import DualEncoder, EncoderShape

RGB = {"red": (220, 30, 30), "green": (30, 160, 50), "blue": (40, 70, 220)}


class ColourEmbedder:
    """Images embed as their mean colour's nearest primary; texts as the colours they name (none: all three)."""

    dim = 3

    def embed_images(self, images):
        v = np.array([np.asarray(im, dtype=np.float32).mean(axis=(0, 1)) for im in images]) ** 4
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    def embed_texts(self, texts):
        v = np.array([[float(c in t.lower()) for c in RGB] for t in texts]) + 1e-3
        return v / np.linalg.norm(v, axis=1, keepdims=True)


def solid(colour: str, size: int = 8) -> Image.Image:
    return Image.new("RGB", (size, size), RGB[colour])


def pair(colour: str, caption: str, noise: str = "clean") -> Document:
    return Document(parts=[caption, solid(colour)], image_metadata=[{"noise": noise}], metadata={"label": colour})


def pipeline(kind: str = "captions", concepts=None, captioner=None, **settings) -> Pipeline:
    cfg = CurateConfig(**{"clip_filter": "threshold", "clip_threshold": 0.8, **settings})
    return Pipeline(cfg, kind, embedder=ColourEmbedder, captioner=lambda: captioner, concepts=concepts)


def test_clip_filter_removes_misaligned_pairs_and_records_the_truth():
    docs = [pair("red", "a red square"), pair("blue", "a green circle", "misaligned"), pair("green", "click here", "uninformative"),
            pair("blue", "a blue circle")]  # fmt: skip
    p = pipeline()
    kept = p.run(docs)
    assert [d.texts[0] for d in kept] == ["a red square", "a blue circle"]
    step = p.record.steps[0]
    assert (step.name, step.documents_in, step.documents_out, dict(step.removed)) == ("clip_score", 4, 2, {"clip_score": 2})
    assert p.record.ground_truth == {"clean": {"scored": 2, "kept_by_clip": 2, "in_output": 2},
                                     "misaligned": {"scored": 1, "kept_by_clip": 0},
                                     "uninformative": {"scored": 1, "kept_by_clip": 0}}  # fmt: skip
    assert len(p.record.examples["clip_score"]) == 2


def test_top_fraction_keeps_the_best_share():
    scores = np.array([0.9, 0.1, 0.5, 0.7])
    assert score_threshold(scores, keep_fraction=0.5) == 0.7 and score_threshold(scores, threshold=0.3) == 0.3
    docs = [pair("red", "red"), pair("red", "red and green"), pair("red", "blue"), pair("red", "red, green and blue")]
    kept = pipeline(clip_filter="top_fraction", clip_keep_fraction=0.5).run(docs)
    assert [d.texts[0] for d in kept] == ["red", "red and green"]


def test_interleaved_documents_lose_the_image_and_keep_their_text():
    doc = Document(parts=["Look at this.", solid("red"), "It is a red square. Then another.", solid("blue"), "A green one."],
                   image_metadata=[{}, {}], metadata={"url": "x"})  # fmt: skip
    p = pipeline("obelics")
    (kept,) = p.run([doc])
    assert [type(x).__name__ for x in kept.parts] == ["str", "Image", "str"]
    assert kept.texts == ["Look at this.", "It is a red square. Then another. A green one."]
    assert dict(p.record.steps[0].images_removed) == {"clip_score": 1}


def test_interleaved_documents_have_their_own_threshold():
    """A sentence naming two colours scores 0.71 with a one-colour image: under the pairs' 0.8 it removes a
    caption pair, and a document image only below the documents' threshold."""
    doc = Document(parts=["It is red and green.", solid("red")], image_metadata=[{}])
    assert pipeline("obelics", clip_threshold_documents=0.6).run([doc])[0].images
    assert not pipeline("obelics", clip_threshold_documents=0.75).run([doc])[0].images
    p = pipeline("captions", clip_threshold_documents=0.6)
    assert p.run([pair("red", "red and green")]) == [] and p.record.steps[0].settings == {"threshold": 0.8}


def scene_pair(colour: str, caption: str, noise: str, shape: str = "square") -> Document:
    """A pair whose metadata is a shapes-world scene of one large ``colour`` ``shape`` in the center."""
    scene = {"background": "white", "shapes": [{"shape": shape, "color": colour, "size": "large", "position": "center"}]}
    return Document(parts=[caption, solid(colour)], image_metadata=[{**scene, "noise": noise}])


def test_recaption_keeps_new_captions_the_filter_passes():
    docs = [scene_pair("red", "IMG_0042.jpg", "uninformative"), scene_pair("blue", "a red thing", "misaligned"),
            pair("green", "green"), scene_pair("red", "click here", "uninformative", shape="circle")]  # fmt: skip
    right = describe_scene(docs[0].image_metadata[0])  # 'a large red square in the center, on a white background'
    p = pipeline(recaption=True, recaption_threshold=0.8, captioner=lambda images: [right, "a green circle", right])
    kept = p.run(docs)
    assert [d.texts[0] for d in kept] == ["green", right, right]
    assert kept[1].image_metadata[0]["recaptioned_from"] == "IMG_0042.jpg"
    recap = p.record.steps[1]
    assert (recap.name, recap.documents_in, recap.added, dict(recap.removed)) == ("recaption", 3, 2, {"not_aligned": 1})
    # scored against the world's truth by the caption parser: the circle got a square's caption, which the colour
    # filter accepts but is wrong; the misaligned pair's caption is neither accepted nor right
    truth = p.record.ground_truth
    assert {k: truth["uninformative"][k] for k in ("recaption_correct", "recaptioned", "recaptioned_correct")} == \
        {"recaption_correct": 1, "recaptioned": 2, "recaptioned_correct": 1}
    assert {k: truth["misaligned"][k] for k in ("recaption_correct", "recaptioned", "recaptioned_correct")} == \
        {"recaption_correct": 0, "recaptioned": 0, "recaptioned_correct": 0}
    json.dumps(p.record.to_dict())  # curation.json takes the record as it is (plain ints, not numpy's)


def test_generated_captions_need_the_recaption_threshold():
    """A new caption naming two colours (cosine 0.71 with a one-colour image) is kept under a recaption threshold
    of 0.6 and not under 0.8, whatever the pairs' own threshold."""
    docs = [pair("blue", "click here", "uninformative")]
    for threshold, added in ((0.6, 1), (0.8, 0)):
        p = pipeline(clip_threshold=0.65, recaption=True, recaption_threshold=threshold,
                     captioner=lambda images: ["blue and green"])  # fmt: skip
        assert len(p.run(docs)) == added
        assert p.record.steps[1].settings == {"threshold": threshold, "captioner": "pretrained"}


def test_concept_balancing_caps_the_head_and_spares_the_tail():
    concepts = read_concepts("world")
    assert "red circle" in concepts and len(concepts) == 18
    matches = match_concepts(["a large red circle and a small blue square", "A RED CIRCLE", "reddish circles", "none"], concepts)
    assert [[concepts[i] for i in m] for m in matches] == [["red circle", "blue square"], ["red circle"], [], []]
    texts = ["a red circle"] * 200 + ["a blue square"] * 5 + ["nothing"] * 3
    matches = match_concepts(texts, concepts)
    keep = balance_by_concept(matches, len(concepts), cap=20, keep_unmatched=False, seed=0)
    assert 10 <= keep[:200].sum() <= 32 and keep[200:205].all() and not keep[205:].any()
    cfg = CurateConfig(clip_filter="off", concepts="world", concept_cap=2, keep_unmatched=True)
    p = Pipeline(cfg, "captions", embedder=ColourEmbedder, concepts=concepts)
    kept = p.run([pair("red", "a red circle") for _ in range(30)] + [pair("red", "nothing to see")])
    assert len(kept) < 10 and kept[-1].texts == ["nothing to see"]
    assert p.record.concepts["before"][concepts.index("red circle")] == 30


def test_balancing_that_keeps_the_data_gives_each_document_its_chance_per_pass():
    concepts = read_concepts("world")
    texts = ["a red circle"] * 200 + ["a blue square"] * 5 + ["a red circle and a blue square"] + ["nothing"] * 3
    matches = match_concepts(texts, concepts)
    p = sampling_probabilities(matches, len(concepts), cap=20)
    red = 20 / 201  # 201 documents name the red circle
    assert np.allclose(p[:200], red) and (p[200:] == 1).all()  # a tail concept keeps the document that also names the head
    kept = np.mean([balance_by_concept(matches, len(concepts), cap=20, keep_unmatched=True, seed=s) for s in range(300)], axis=0)
    assert abs(kept[:200].mean() - red) < 0.01 and (kept[200:206] == 1).all()  # the chance that drop mode keeps one
    cfg = CurateConfig(clip_filter="off", concepts="world", concept_cap=20, concept_balance="sample", keep_unmatched=False)
    pipe = Pipeline(cfg, "captions", embedder=ColourEmbedder, concepts=concepts)
    docs = pipe.run([pair("red", t) for t in texts])
    assert len(docs) == 206 and pipe.record.steps[-1].removed == {"concept_unmatched": 3}
    assert [d.metadata.get(SAMPLING_KEY) for d in docs[198:202]] == [pytest.approx(red)] * 2 + [None] * 2
    per_pass = pipe.record.concepts["after"]
    assert per_pass[concepts.index("red circle")] == pytest.approx(200 * red + 1, abs=0.1) and pipe.record.concepts["per_pass"]
    assert per_pass[concepts.index("blue square")] == 6


@pytest.mark.parametrize("kind", ["obelics", "mmc4", "captions"])
def test_sampling_probabilities_survive_the_written_corpus(tmp_path, kind):
    docs = [Document(parts=[f"a red circle {i}", solid("red")], image_metadata=[{}],
                     metadata={SAMPLING_KEY: 0.25} if i % 2 else {}) for i in range(4)]  # fmt: skip
    write_corpus(docs, kind, str(tmp_path / "out"))
    again = list(open_corpus(str(tmp_path / "out"), kind, options=DataConfig(dedup_images=False)))
    assert [d.metadata.get(SAMPLING_KEY) for d in again] == [None, 0.25, None, 0.25]
    with pytest.raises(CorpusError, match="ImageFolder"):
        write_corpus([Document(parts=[solid("red")], metadata={"label": "red", SAMPLING_KEY: 0.5})], "imagefolder",
                     str(tmp_path / "folder"))  # fmt: skip


def test_a_bad_sampling_probability_skips_its_record_counted(tmp_path):
    write_corpus([pair("red", "a red circle")], "captions", str(tmp_path / "c"))
    line = json.loads((tmp_path / "c" / "captions.jsonl").read_text())
    rows = [{**line, SAMPLING_KEY: v} for v in (0.5, 0, 1.5, "high", True)]
    (tmp_path / "c" / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    corpus = open_corpus(str(tmp_path / "c"), "captions", options=DataConfig(dedup_documents=False, dedup_images=False))
    assert [d.metadata[SAMPLING_KEY] for d in corpus] == [0.5]
    assert corpus.stats.skipped == {"bad_sampling_probability": 4}


def test_cluster_balancing_and_near_duplicates():
    docs = [pair("red", f"red {i}") for i in range(12)] + [pair("blue", "blue"), pair("green", "green")]
    cfg = CurateConfig(clip_filter="off", clusters=2, cluster_cap=2)
    p = Pipeline(cfg, "captions", embedder=ColourEmbedder)
    kept = p.run(docs)
    assert len(kept) == 4 and {"blue", "green"} <= {d.texts[0] for d in kept}
    assert p.record.clusters["before"] == [12, 2] and p.record.clusters["after"] == [2, 2]
    x = np.array([[1, 0], [0.999, 0.0447], [0, 1], [1, 0]], dtype=np.float32)
    assert repeats_earlier(x, 0.99).tolist() == [False, True, False, True]
    cfg = CurateConfig(clip_filter="off", near_duplicate_similarity=0.99)
    kept = Pipeline(cfg, "captions", embedder=ColourEmbedder).run(docs)
    assert [d.texts[0] for d in kept] == ["red 0", "blue", "green"]


def test_mmc4_images_without_a_sentence_are_assigned(tmp_path):
    for colour in RGB:
        solid(colour).save(tmp_path / f"{colour}.png")
    record = {"text_list": ["The sky is blue.", "Grass is green.", "A red apple."],
              "image_info": [{"image_name": "red.png"}, {"image_name": "blue.png", "matched_text_index": None}]}  # fmt: skip
    (tmp_path / "docs.jsonl").write_text(json.dumps(record) + "\n")
    (doc,) = list(open_corpus(str(tmp_path / "docs.jsonl")))
    assert isinstance(doc.parts[0], str) and len(doc.images) == 2  # unplaced: after the text
    p = Pipeline(CurateConfig(clip_filter="off"), "mmc4", embedder=ColourEmbedder)
    (placed,) = p.run([doc])
    assert [p if isinstance(p, str) else "IMG" for p in placed.parts] == ["IMG", "The sky is blue. Grass is green.", "IMG",
                                                                        "A red apple."]  # fmt: skip
    assert [m["matched_text_index"] for m in placed.image_metadata] == [0, 2]
    write_corpus([placed], "mmc4", str(tmp_path / "out"))
    (again,) = list(open_corpus(str(tmp_path / "out")))
    assert [p if isinstance(p, str) else "IMG" for p in again.parts] == ["IMG", "The sky is blue. Grass is green.", "IMG",
                                                                       "A red apple."]  # fmt: skip


@pytest.mark.parametrize("kind", ["obelics", "mmc4", "captions", "imagefolder"])
def test_written_corpus_reads_back_the_same(tmp_path, kind):
    source = {"obelics": lambda: write_obelics(tmp_path / "in"), "mmc4": lambda: write_mmc4(tmp_path / "in", zipped=True),
              "captions": lambda: write_captions(tmp_path / "in" / "c.jsonl"),
              "imagefolder": lambda: write_imagefolder(tmp_path / "in")}[kind]()  # fmt: skip
    docs = list(open_corpus(str(source), kind))
    assert write_corpus(docs, kind, str(tmp_path / "out")) == len(docs) > 0
    corpus = open_corpus(str(tmp_path / "out"))
    again = list(corpus)
    assert corpus.kind == kind and len(again) == len(docs)
    for a, b in zip(docs, again):
        assert a.texts == b.texts and len(a.images) == len(b.images)
        assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a.images, b.images))
        assert b.metadata.get("origin", {}).get("row", a.metadata["row"]) == a.metadata["row"] or kind == "imagefolder"
    if kind == "captions":
        assert [d.image_metadata for d in docs] == [d.image_metadata for d in again]
    with pytest.raises(CorpusError, match="one image per document"):
        write_corpus([Document(parts=["text only"])], "captions", str(tmp_path / "bad"))
    assert not list(tmp_path.glob("*.tmp"))


# ----- the CLI -----


@pytest.fixture(scope="module")
def run_with_encoder(tmp_path_factory) -> Path:
    """A run folder with tiny tokenizers and an untrained dual encoder over them."""
    run = tmp_path_factory.mktemp("curate-run")
    paths = make_tokenizers(run)
    from mmgen.tokenizers.image import ImageTokenizer
    from mmgen.tokenizers.text import TextTokenizer

    text, image = TextTokenizer.load(paths.text_tokenizer), ImageTokenizer.load(paths.image_tokenizer)
    shape = EncoderShape(text_vocab_size=text.vocab_size, codebook_size=image.codebook_size, grid=tuple(image.grid),
                         width=16, layers=1, heads=2, embed_dim=8)  # fmt: skip
    DualEncoder(shape).save(paths.retrieval_encoder)
    write_captions(run / "pairs" / "c.jsonl")
    return run


def test_cli_curates_caption_pairs_end_to_end(run_with_encoder, tmp_path):
    out = tmp_path / "curated"
    status, err = run_stage("data/curate.py", run_with_encoder, "--curate.input", str(run_with_encoder / "pairs" / "c.jsonl"),
                            "--curate.output", str(out), "--curate.clip_filter", "top_fraction",
                            "--curate.clip_keep_fraction", "0.5", "--curate.clusters", "2", "--curate.cluster_cap", "5",
                            "--curate.concepts", "world")  # fmt: skip
    assert status == 0, err
    assert len(list(open_corpus(str(out)))) == 2
    report = run_with_encoder / "curate"
    record = json.loads((report / "curation.json").read_text())
    assert [s["step"] for s in record["steps"]] == ["clip_score", "concepts", "clusters"]
    assert record["steps"][0]["removed"] == {"clip_score": 2} and len(record["clip_scores"]) == 4
    html = (report / "report.html").read_text()
    assert "clip_score" in html and "data:image/png;base64," in html and (report / "clip_scores.png").stat().st_size > 0


@pytest.mark.parametrize("args,names", [
    (["--curate.encoder", "/nonexistent/encoder"], ["encoder.json"]),
    (["--curate.clip_filter", "off", "--curate.concepts", "/nonexistent/concepts.txt"], ["concepts.txt"]),
    (["--curate.clip_keep_fraction", "0"], ["curate.clip_keep_fraction"]),
    (["--curate.recaption", "true"], ["pretrain/model.json"]),
    (["--curate.recaption", "true", "--curate.captioner", "sft"], ["curate.captioner", "train/sft.py"]),
    (["--curate.input", "/nonexistent/corpus.jsonl"], ["/nonexistent/corpus.jsonl"]),
    (["--curate.output", "{run}/pairs"], ["curate.output", "replace the input"]),
])  # fmt: skip
def test_cli_bad_input_is_one_error_line(run_with_encoder, args, names):
    pairs = ["--curate.input", str(run_with_encoder / "pairs" / "c.jsonl")]
    status, err = run_stage("data/curate.py", run_with_encoder, *pairs, *(a.format(run=run_with_encoder) for a in args))
    assert_one_error_line(status, err, *names)


def test_cli_balancing_that_keeps_the_data_writes_probabilities(run_with_encoder, tmp_path):
    out = tmp_path / "curated"
    args = ["--curate.clip_filter", "off", "--curate.concepts", "world", "--curate.concept_balance", "sample"]
    status, err = run_stage("data/curate.py", run_with_encoder, "--curate.input", str(run_with_encoder / "pairs" / "c.jsonl"),
                            "--curate.output", str(out), *args)  # fmt: skip
    assert status == 0, err
    assert len(list(open_corpus(str(out)))) == 4  # nothing is dropped; the pairs name no world concept: probability 1
    folder = write_imagefolder(tmp_path / "folder")
    status, err = run_stage("data/curate.py", run_with_encoder, "--curate.input", str(folder), "--curate.output",
                            str(tmp_path / "out2"), *args)  # fmt: skip
    assert_one_error_line(status, err, "ImageFolder", "curate.concept_balance")


def test_decoder_captioner_captions_each_image_without_the_lead(tiny_tokenizer):
    import torch

    from mmgen.config.schema import ModelConfig
    from mmgen.model import Transformer
    from mmgen.retrieval.corpus_curation import decoder_captioner

    torch.manual_seed(0)
    model = Transformer(ModelConfig(dim=32, n_layers=1, n_heads=2, max_seq_len=128), tiny_tokenizer.vocab.size)
    model.init_weights()
    captioner = decoder_captioner(model.eval(), tiny_tokenizer, prompt="Look at this picture.", lead="It shows",
                                  max_tokens=6)  # fmt: skip
    captions = captioner([solid("red", 16), solid("blue", 16)])
    assert len(captions) == 2 and all(isinstance(c, str) and not c.startswith("It shows") for c in captions)


def test_a_fine_tuned_captioner_is_asked_as_its_sft_caption_task(tiny_tokenizer, monkeypatch):
    """``fine_tuned``: the prompt is the SFT caption example's context (BOS, the caption task token, the
    instruction, SEP, the image, SEP), and the caption is the answer's first sentence without its stop."""
    import mmgen.generation.captioning as captioning
    from mmgen.retrieval.corpus_curation import decoder_captioner

    vocab, asked = tiny_tokenizer.vocab, []

    def scripted(model, vocab_, prompts, params, progress=None):
        asked.extend(prompts)
        return [tiny_tokenizer.encode_text("a small red circle. Then") + [vocab.eos] for _ in prompts]

    monkeypatch.setattr(captioning, "sample", scripted)
    captioner = decoder_captioner(None, tiny_tokenizer, prompt="Look at this picture.", lead="It shows",
                                  max_tokens=6, fine_tuned=True)  # fmt: skip
    assert captioner([solid("red", 16), solid("blue", 16)]) == ["a small red circle"] * 2
    h, w = vocab.grid
    assert len(asked) == 2
    for prompt in asked:
        assert prompt[:2] == [vocab.bos, vocab.special("task_caption")] and prompt[-1] == vocab.sep
        assert sum(vocab.is_image(t) for t in prompt) == h * w
        text = "".join(p for p in tiny_tokenizer.decode_parts(prompt, strict=False) if isinstance(p, str))
        assert "Describe the image." in text and "It shows" not in text and "Look at" not in text


def test_cli_curates_the_noisy_shapes_world_and_scores_the_ground_truth(run_with_encoder, tmp_path):
    noisy = ["--world.noise_misaligned", "0.3", "--world.noise_uninformative", "0.2", "--world.concept_tail", "1"]
    status, err = run_stage("data/make_world.py", run_with_encoder, *noisy, "--world.train_caption_pairs", "30")
    assert status == 0, err
    status, err = run_stage("data/curate.py", run_with_encoder, "--curate.clip_filter", "top_fraction",
                            "--curate.clip_keep_fraction", "0.6", "--curate.near_duplicate_similarity", "0.999")  # fmt: skip
    assert status == 0, err
    record = json.loads((run_with_encoder / "curate" / "curation.json").read_text())
    truth = record["ground_truth"]
    read = record["read"]["documents_read"]
    near_dup = record["steps"][0]["removed"].get("near_duplicate", 0)
    assert sum(t["scored"] for t in truth.values()) == read - near_dup
    assert truth["misaligned"]["scored"] > 0 and truth["uninformative"]["scored"] > 0
    curated = list(open_corpus(str(run_with_encoder / "curated")))
    assert len(curated) == sum(t.get("in_output", 0) for t in truth.values()) == record["steps"][-1]["documents_out"]
    assert all(d.image_metadata[0]["noise"] in truth for d in curated)


def test_load_embedder_takes_a_clip_folder_or_the_dual_encoder(run_with_encoder, tmp_path, monkeypatch):
    from mmgen.config import RunPaths
    from mmgen.retrieval import embedder as embedder_module

    paths = RunPaths(str(run_with_encoder))
    assert isinstance(embedder_module.load_embedder(paths.retrieval_encoder, paths), embedder_module.TokenEmbedder)
    (tmp_path / "clip").mkdir()
    (tmp_path / "clip" / "config.json").write_text("{}")
    monkeypatch.setattr(embedder_module, "CLIPEmbedder", lambda folder: ("clip", folder))
    assert embedder_module.load_embedder(str(tmp_path / "clip"), paths) == ("clip", str(tmp_path / "clip"))
    with pytest.raises(FileNotFoundError, match="encoder.json"):
        embedder_module.load_embedder(str(tmp_path / "nothing"), paths)
