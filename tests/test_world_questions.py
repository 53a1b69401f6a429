"""Question-answer text in the shapes world's training documents: the SFT VQA task's words, right answers read
back from the text, training split only, deterministic, and nothing else changed (off: today's bytes)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from mmgen.config import ConfigError, RunPaths, load_config
from mmgen.config.schema import TextTokenizerConfig, WorldConfig
from mmgen.data.sft_tasks import SHORT_ANSWER, answer_text, vqa_example, vqa_questions
from mmgen.data.shapes_world import describe_scene, generate_world, parse_caption, random_scene, render_scene, scene_split
from mmgen.tokenizers.text import train_text_tokenizer
from world_helpers import files_of, world_cfg

QA = dict(qa_share=0.8, qa_per_image=3, qa_question_first=0.5)
NOISE = dict(noise_misaligned=0.2, noise_uninformative=0.2)
QUESTION = r"((?:What|How|Where|Is) [^?.]*\?) " + re.escape(SHORT_ANSWER)
ANSWER = r"([a-z]+(?: [a-z]+)?)\."


def rows_of(root: Path, split: str = "train") -> list[dict]:
    shards = sorted((root / "corpus" / split).glob("shard-*.parquet"))
    return [row for shard in shards for row in pq.read_table(shard).to_pylist()]


@pytest.fixture(scope="module", params=[{}, NOISE], ids=["clean", "noisy"])
def worlds(request, tmp_path_factory) -> tuple[Path, dict, Path, dict]:
    """(world with questions, its counts, the same world without them, the noise of both): clean or with
    web-like noise, which must leave the questions whole."""
    on, off = tmp_path_factory.mktemp("questions"), tmp_path_factory.mktemp("plain")
    counts = generate_world(world_cfg(**request.param, **QA), RunPaths(str(on)))
    generate_world(world_cfg(**request.param), RunPaths(str(off)))
    return on, counts, off, request.param


def true_answer(question: str, scene: dict) -> str:
    """The answer read from the scene's ground truth, written independently of the generator's questions."""
    shapes = scene["shapes"]
    if question == "How many shapes are there?":
        return ("one", "two", "three")[len(shapes) - 1]
    if question == "What color is the background?":
        return scene["background"]
    forms = {r"What color is the (\w+)\?": lambda m, s: s["shape"] == m[1] and s["color"],
             r"What shape is the (\w+) object\?": lambda m, s: s["color"] == m[1] and s["shape"],
             r"Where is the (\w+) (\w+)\?": lambda m, s: (s["color"], s["shape"]) == (m[1], m[2]) and s["position"],
             r"Is the (\w+) (\w+) small or large\?": lambda m, s: (s["color"], s["shape"]) == (m[1], m[2]) and s["size"]}  # fmt: skip
    for form, read in forms.items():
        if match := re.fullmatch(form, question):
            answers = [a for s in shapes if (a := read(match, s))]
            assert len(answers) == 1, f"{question!r} does not name one shape of {describe_scene(scene)}"
            return answers[0]
    raise AssertionError(f"unknown question {question!r}")


def read_questions(before: str, after: str) -> tuple[list[tuple[str, str]], str, str]:
    """(question, answer) pairs around one image, parsed from its texts alone, and both texts without them."""
    pairs = []
    if asked := re.search(" " + QUESTION + "$", before):
        answered = re.match(" " + ANSWER + " ", after)  # written as within a sentence, as SFT answers are
        assert answered, f"question before the image, no answer after it: {after!r}"
        pairs.append((asked[1], answered[1]))
        before, after = before[: asked.start()], after[answered.end():]
    while more := re.match(QUESTION + " " + ANSWER + " ", after):
        pairs.append((more[1], more[2]))
        after = after[more.end():]
    return pairs, before, after


def test_questions_parse_back_to_the_right_answers_and_take_nothing_away(worlds):
    on, counts, off, _ = worlds
    images = questions = 0
    asked = set()
    for row, plain in zip(rows_of(on), rows_of(off), strict=True):
        texts, metas = list(row["texts"]), json.loads(row["metadata"])
        assert row["images"] == plain["images"]  # the same pictures
        for k, meta in enumerate(metas):
            if meta is None:
                continue
            records = meta.pop("qa", [])
            if k == 0 or k + 1 == len(texts):
                assert not records
                continue
            pairs, texts[k - 1], texts[k + 1] = read_questions(texts[k - 1], texts[k + 1])
            scene = {"background": meta["background"], "shapes": meta["shapes"]}
            assert pairs == [(r["question"], r["answer"]) for r in records]  # the text holds what the metadata says
            assert all(answer == true_answer(question, scene) for question, answer in pairs)
            if pairs:
                images, questions = images + 1, questions + len(pairs)
                asked |= {r["asked"] for r in records}
                assert len(pairs) <= QA["qa_per_image"] and len({q for q, _ in pairs}) == len(pairs)
                # no answer is given away by another question about the image ("the red object" after "red.")
                assert not any(re.search(rf"\b{a}\b", q) for q, _ in pairs for p, a in pairs if p != q)
                # no text described the image before it: its answers are only in the picture
                assert parse_caption(re.split(r"(?<=[.:])\s+", texts[k - 1])[-1]) == []
        assert texts == plain["texts"] and metas == json.loads(plain["metadata"])  # without them: the plain world
    assert images == counts["train_qa_images"] > 0 and questions == counts["train_qa_questions"]
    assert asked == {"before_image", "after_image"}
    text = " ".join(t for row in rows_of(on) for t in row["texts"] if t)
    assert text.count(SHORT_ANSWER) == questions  # no question away from its image


def test_questions_are_the_sft_vqa_tasks_prompts_and_answers(worlds):
    on, *_ = worlds
    checked = 0
    for row in rows_of(on)[:20]:
        for meta in json.loads(row["metadata"]):
            if not meta or "qa" not in meta:
                continue
            image = render_scene(meta, 32)
            sft = {(e.instruction, e.output) for e in (vqa_example(image, meta, np.random.default_rng(i)) for i in range(400))}
            texts = " ".join(t for t in row["texts"] if t)
            for record in meta["qa"]:
                instruction = f"{record['question']} {SHORT_ANSWER}"
                assert (instruction, answer_text(record["answer"])) in sft
                assert instruction in texts
                checked += 1
    assert checked > 5


def test_training_split_only_and_scenes_keep_their_split(worlds):
    on, _, off, _ = worlds
    plain, asked = files_of(off), files_of(on)
    heldout = [name for name in plain if "heldout" in name]
    assert heldout and all(asked[name] == plain[name] for name in heldout)
    assert all(asked[name] == plain[name] for name in plain if name.startswith("corpus/captions-train"))
    for row in rows_of(on):
        scenes = [m for m in json.loads(row["metadata"]) if m]
        assert all(scene_split(scene) == "train" for scene in scenes)


def test_same_seed_same_bytes_other_seed_other_questions(worlds, tmp_path):
    on, counts, _, noise = worlds
    assert generate_world(world_cfg(**noise, **QA), RunPaths(str(tmp_path / "again"))) == counts
    assert files_of(tmp_path / "again") == files_of(on)
    generate_world(world_cfg(**noise, **QA, seed=1), RunPaths(str(tmp_path / "other")))
    assert rows_of(tmp_path / "other") != rows_of(on)


def test_option_off_writes_the_plain_world(tmp_path):
    # the other question fields do nothing while qa_share is 0: byte for byte the world without the option
    plain = generate_world(world_cfg(), RunPaths(str(tmp_path / "plain")))
    counts = generate_world(world_cfg(qa_share=0.0, qa_per_image=5, qa_question_first=0.2), RunPaths(str(tmp_path / "off")))
    assert counts == plain and not any(key.startswith("train_qa") for key in counts)
    assert files_of(tmp_path / "off") == files_of(tmp_path / "plain")
    assert all("qa" not in (m or {}) for row in rows_of(tmp_path / "off") for m in json.loads(row["metadata"]))
    assert not any(SHORT_ANSWER in (t or "") for row in rows_of(tmp_path / "off") for t in row["texts"])


@pytest.mark.parametrize("override", [("--world.qa_share", "1.5"), ("--world.qa_per_image", "0"),
                                      ("--world.qa_question_first", "-0.1")])  # fmt: skip
def test_question_fields_are_checked(override):
    with pytest.raises(ConfigError, match=override[0].removeprefix("--")):
        load_config(["--config", "debug", *override])



def test_sft_answers_are_the_pieces_captions_name_them_with(tmp_path):
    """The text tokenizer adds no dummy prefix: a bare answer ("purple") would be fragments pretraining never
    shows, so the VQA output is written as within a sentence and keeps the caption's own pieces."""
    rng = np.random.default_rng(0)
    scenes = [random_scene(rng, WorldConfig()) for _ in range(2000)]
    captions = [describe_scene(s) for s in scenes]
    text = train_text_tokenizer(captions, TextTokenizerConfig(vocab_size=400), str(tmp_path / "t.model"), log=lambda _: None)
    checked = 0
    for i, (scene, caption) in enumerate(zip(scenes[:200], captions[:200])):
        example = vqa_example(render_scene(scene, 16), scene, np.random.default_rng(i))
        assert example.output == answer_text(example.metadata["answer"])
        caption_ids = text.encode(caption)
        for kind, _, answer in vqa_questions(scene):
            if kind == "count":  # "two" is no caption word
                continue
            ids = text.encode(answer_text(answer))
            assert any(caption_ids[k : k + len(ids)] == ids for k in range(len(caption_ids))), (answer, caption)
            assert text.encode(answer) != ids  # the bare word is other pieces: what the space buys
            checked += 1
    assert checked > 200
