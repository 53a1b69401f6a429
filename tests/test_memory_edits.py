"""Memory edits end to end on a tiny run (world with entities → encode → bank → retrieval/edit_bank.py),
and the knowledge evaluation on the same run with a tiny random decoder."""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from corpus_helpers import make_tokenizers
from mmgen.config import RunPaths, load_config
from mmgen.config.schema import ModelConfig, TextTokenizerConfig, WorldConfig
from mmgen.data.corpus import open_corpus
from mmgen.data.entities import definition_text, evaluation_items, read_entities, scene_entities
from mmgen.data.shapes_world import generate_world, render_scene
from mmgen.data.token_shards import TokenShards
from mmgen.model import Transformer
from mmgen.retrieval.bank_documents import bank_documents
from mmgen.retrieval.encoder import DualEncoder, EncoderShape
from mmgen.retrieval.evaluation import defining_documents
from mmgen.retrieval.memory_bank import MemoryBank
from mmgen.retrieval.neighbours import build_bank_and_neighbours, load_neighbours
from mmgen.tokenizers.run import load_run_tokenizer
from mmgen.tokenizers.text import train_text_tokenizer

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}


def cli(script: str, run: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / script), "--config", "debug", "--output_dir", str(run), *args],
                          capture_output=True, text=True, env=ENV, cwd=REPO, timeout=600)  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> RunPaths:
    """A run with a world of 12 entities, encoded, with a seeded (untrained) dual encoder and its bank."""
    root = tmp_path_factory.mktemp("edits")
    paths = RunPaths(str(root))
    world = WorldConfig(train_documents=30, heldout_documents=12, train_caption_pairs=10, heldout_caption_pairs=4,
                        entities=12, entity_share=0.5)  # fmt: skip
    generate_world(world, paths)
    make_tokenizers(root)
    # a text tokenizer of the world's own text, as train_text.py makes one: entity names become whole pieces
    texts = [t for split in ("train", "bank") for d in open_corpus(paths.corpus_split(split)) for t in d.texts]
    train_text_tokenizer(texts * 3, TextTokenizerConfig(vocab_size=400), paths.text_tokenizer, log=lambda _: None)
    encoded = cli("tokenizers/encode.py", root)
    assert encoded.returncode == 0, encoded.stderr
    tokenizer = load_run_tokenizer(paths)
    torch.manual_seed(0)
    shape = EncoderShape(text_vocab_size=tokenizer.text_tok.vocab_size, codebook_size=tokenizer.image_tok.codebook_size,
                         grid=tuple(tokenizer.vocab.grid), width=32, layers=1, embed_dim=16)  # fmt: skip
    DualEncoder(shape).eval().save(paths.retrieval_encoder)
    cfg = load_config(["--config", "debug"])
    splits = {s: (TokenShards(paths.tokens(s)), paths.neighbours(s)) for s in ("train", "heldout")}
    build_bank_and_neighbours(DualEncoder.load(paths.retrieval_encoder), tokenizer.vocab, bank_documents(paths), splits,
                              cfg.retrieval, paths.memory_bank, log=lambda _: None, text_tokenizer=tokenizer.text_tok)  # fmt: skip
    return paths


def test_encode_writes_the_bank_corpus_and_the_bank_indexes_it(run):
    train, bank = TokenShards(run.tokens("train")), TokenShards(run.tokens("bank"))
    assert len(bank) == 12
    assert MemoryBank.load(run.memory_bank).index.ntotal == len(train) + len(bank)
    defining = defining_documents(bank_documents(run))
    assert sorted(defining) == sorted(e["name"] for e in read_entities(run.entities)["entities"])
    assert all(i >= len(train) for i in defining.values())


def test_edit_replaces_a_definition_adds_an_entity_and_reindexes(run, tmp_path):
    record = read_entities(run.entities)
    old = record["entities"][3]
    new_look = {"name": old["name"], "parts": [{"shape": "square", "color": "yellow", "size": "large"}], "layout": None}
    if new_look["parts"][0] == old["parts"][0] and len(old["parts"]) == 1:
        new_look["parts"][0]["color"] = "purple"
    added = {"name": "Quibblor", "parts": [{"shape": "circle", "color": "red", "size": "small"},
                                            {"shape": "triangle", "color": "blue", "size": "large"}], "layout": "above"}  # fmt: skip
    edits = tmp_path / "edits.jsonl"
    edits.write_text(json.dumps(new_look) + "\n\n" + json.dumps(added) + "\n")
    out = cli("retrieval/edit_bank.py", Path(run.root), "--retrieval.bank_define", str(edits))
    assert out.returncode == 0, out.stderr
    assert f"replaced {old['name']}" in out.stdout and "added entities Quibblor" in out.stdout
    bank_docs = list(open_corpus(run.corpus_split("bank")))
    texts = {scene_entities(d.image_metadata[0])[0]: d.texts[0] for d in bank_docs}
    assert len(bank_docs) == 13 and texts[old["name"]] == definition_text(new_look)
    assert texts["Quibblor"] == definition_text(added)
    after = read_entities(run.entities)
    entities = {e["name"]: e for e in after["entities"]}
    assert entities[old["name"]]["parts"] == new_look["parts"] and entities[old["name"]]["edit"] == "replaced"
    assert entities[old["name"]]["train_uses"] == old["train_uses"]
    assert entities["Quibblor"]["edit"] == "added" and entities["Quibblor"]["group"] == "tail"
    items = [i for split in ("heldout", "validation") for i in after["items"][split] if i["entity"] == old["name"]]
    assert all(len(i["scene"]["shapes"]) == 1 and i["scene"]["shapes"][0]["color"] == new_look["parts"][0]["color"]
               for i in items)  # fmt: skip
    # the bank was encoded again and re-indexed: the new definitions are what retrieval reads
    documents = bank_documents(run)
    assert MemoryBank.load(run.memory_bank).index.ntotal == len(documents) == len(TokenShards(run.tokens("train"))) + 13
    defining = defining_documents(documents)
    tokenizer = load_run_tokenizer(run)
    text = "".join(p for p in tokenizer.decode_parts(documents[defining["Quibblor"]], strict=False) if isinstance(p, str))
    assert text.startswith(definition_text(added))
    load_neighbours(run.neighbours("heldout"), TokenShards(run.tokens("heldout")))  # rebuilt on the same tokens


def test_the_hybrid_retriever_finds_every_definition_with_an_untrained_encoder(run):
    """Recall@1 of the defining document is 1 for every entity prompt, head and tail (the seeded encoder ranks
    at random); the dense encoder alone does not get there."""
    from mmgen.eval.knowledge import entity_recall, pick_items
    from mmgen.retrieval.query import load_retriever

    cfg = load_config(["--config", "debug"])
    tokenizer = load_run_tokenizer(run)
    encoder, bank = load_retriever(run.retrieval_encoder, run.memory_bank)
    assert bank.names is not None  # the default retriever is hybrid
    chosen = pick_items(read_entities(run.entities), "heldout", 0, seed=0)
    items = [i for group in ("head", "tail") for i in chosen[group]]
    recall = entity_recall(items, cfg.eval.t2i_template, tokenizer, encoder=encoder, bank=bank,
                           documents=bank_documents(run))  # fmt: skip
    assert recall["hybrid"]["items"] == len(items) > 0
    assert recall["hybrid"]["recall@1"] == 1.0
    assert recall["dual_encoder"]["recall@5"] < 1.0


def test_hybrid_neighbours_start_with_the_named_definition_and_leave_entity_free_documents_alone(run, tmp_path):
    """Training documents that name an entity get its definition first; entity-free ones get exactly the dense
    retriever's neighbours; a bank built 'dense' keeps no name lookup."""
    from mmgen.retrieval.name_lookup import NameLookup

    cfg = load_config(["--config", "debug"])
    tokenizer = load_run_tokenizer(run)
    train = TokenShards(run.tokens("train"))
    documents = bank_documents(run)
    encoder = DualEncoder.load(run.retrieval_encoder)
    tables = {}
    for retriever in ("hybrid", "dense"):
        cfg.retrieval.retriever = retriever
        bank_dir, table = str(tmp_path / retriever), str(tmp_path / f"{retriever}.npy")
        report = build_bank_and_neighbours(encoder, tokenizer.vocab, documents, {"train": (train, table)},
                                           cfg.retrieval, bank_dir, log=lambda _: None,
                                           text_tokenizer=tokenizer.text_tok)  # fmt: skip
        assert (NameLookup.load(bank_dir) is not None) == (retriever == "hybrid")
        assert report["train"]["retriever"] == retriever
        tables[retriever] = load_neighbours(table, train)
    defining = defining_documents(documents)
    named = free = 0
    for i in range(len(train)):
        shown = {n for scene in train.metadata(i).get("images", []) for n in scene_entities(scene)}
        if shown:
            named += 1
            assert tables["hybrid"][i, 0] == defining[shown.pop()]
        else:
            free += 1
            assert (tables["hybrid"][i] == tables["dense"][i]).all()
    assert named > 0 and free > 0
    assert (tables["dense"][:, 0] != tables["hybrid"][:, 0]).sum() > 0


def edit_in_process(run: RunPaths, monkeypatch, capsys, *args: str) -> tuple[int, str]:
    """retrieval/edit_bank.py run in this process (the same ``run_cli`` path, without a new interpreter)."""
    monkeypatch.setattr(sys, "argv", ["edit_bank.py", "--config", "debug", "--output_dir", run.root, *args])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(REPO / "retrieval/edit_bank.py"), run_name="__main__")
    return exit_info.value.code, capsys.readouterr().err


@pytest.mark.parametrize("content, message", [
    ('{"name": "Zorbel", "parts": [{"shape": "hexagon", "color": "red", "size": "small"}]}\n',
     "edits.jsonl line 1: entity Zorbel: a part's shape must be one of"),
    ('{"name": "Zorbel"\n', "edits.jsonl line 1:"),
    ("", "holds no entity definition"),
    (None, "missing entity definitions"),
])  # fmt: skip
def test_bad_edits_are_one_error_line_and_leave_the_bank_alone(run, tmp_path, monkeypatch, capsys, content, message):
    edits = tmp_path / "edits.jsonl"
    if content is not None:
        edits.write_text(content)
    before = sorted(p.read_bytes() for p in Path(run.corpus_split("bank")).glob("*.parquet"))
    status, err = edit_in_process(run, monkeypatch, capsys, "--retrieval.bank_define", str(edits))
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and lines[0].startswith("error:") and message in lines[0]
    assert sorted(p.read_bytes() for p in Path(run.corpus_split("bank")).glob("*.parquet")) == before


def test_an_edit_without_input_says_what_to_give(run, monkeypatch, capsys):
    status, err = edit_in_process(run, monkeypatch, capsys)
    assert status == 2 and err.strip() == (
        "error: nothing to edit: give --retrieval.bank_define FILE.jsonl and/or --retrieval.bank_add CORPUS")


def test_knowledge_evaluation_runs_both_ways_with_counted_items(run):
    from mmgen.eval.knowledge import evaluate_knowledge, load_knowledge_retriever
    from mmgen.eval.report import _knowledge_section
    from mmgen.retrieval.edits import edit_bank

    cfg = load_config(["--config", "debug", "--output_dir", run.root, "--eval.entity_items", "2",
                       "--eval.t2i_cfg_scale", "0"])  # fmt: skip
    tokenizer = load_run_tokenizer(run)
    torch.manual_seed(0)
    model = Transformer(ModelConfig(dim=32, n_layers=1, n_heads=2, max_seq_len=512), tokenizer.vocab.size)
    model.init_weights()
    retriever = load_knowledge_retriever(cfg, run, "cpu")
    assert retriever is not None
    # an entity added to the bank corpus (no re-index needed to score it): a look with held-out placements
    added = next(d for d in ({"name": "Zibblor", "parts": [{"shape": s, "color": "green", "size": "large"}], "layout": None}
                             for s in ("circle", "square", "triangle"))
                 if evaluation_items([d], "heldout", image_size=32))  # fmt: skip
    edit_bank(cfg, run, definitions=[added])
    result = evaluate_knowledge(cfg, run, model.eval(), tokenizer, retriever=retriever, log=lambda _: None)
    m = result["metrics"]
    assert m["knowledge_plain_t2i_accuracy_added_items"] >= 1  # an added entity's items are scored apart
    for mode in ("plain", "retrieval"):
        for group in ("head", "tail"):
            n = m[f"knowledge_{mode}_t2i_accuracy_{group}_items"]
            assert 1 <= n <= 2 and m[f"knowledge_{mode}_caption_accuracy_{group}_items"] == n
            lo, hi = m[f"knowledge_{mode}_t2i_accuracy_{group}_ci95"]
            assert 0 <= lo <= m[f"knowledge_{mode}_t2i_accuracy_{group}"] <= hi <= 1
        assert np.isfinite(m[f"knowledge_{mode}_text_bits_per_token_entity_free"])
    assert m["knowledge_random_recall@5_items"] == m["knowledge_dual_encoder_recall@5_items"] > 0
    assert m["knowledge_hybrid_recall@5_items"] == m["knowledge_bm25_recall@5_items"] > 0
    # the prompt names the entity, its definition names it too: the lexical baseline finds it
    assert m["knowledge_bag_of_words_recall@5"] > m["knowledge_random_recall@5"]
    page = _knowledge_section(m, result)
    assert "Knowledge of named entities" in page and page.count("<img") == sum(
        min(4, len(r["examples"])) for mode in ("plain", "retrieval") for r in result["runs"][mode]["t2i"].values())
    assert "t2i_accuracy (tail)" in page and "bag_of_words" in page


def test_describe_first_scores_the_image_the_model_draws_after_its_words(run, monkeypatch):
    """eval.entity_describe_first: the model writes greedily after the request, its image is sampled after its
    words and scored as an image the prompt opened is scored; a model that writes on without drawing is wrong."""
    from mmgen.eval import knowledge

    cfg = load_config(["--config", "debug", "--output_dir", run.root])
    tokenizer = load_run_tokenizer(run)
    vocab = tokenizer.vocab
    hw = vocab.grid[0] * vocab.grid[1]
    record = read_entities(run.entities)
    entities = {e["name"]: e for e in record["entities"]}
    items = record["items"]["heldout"][:3]
    encoded = [tokenizer.encode_parts([render_scene(i["scene"], 32)], eos=False) for i in items]
    drawn = [ids[ids.index(vocab.boi) + 1 :][:hw] for ids in encoded]  # the image's codes
    words = tokenizer.encode_text("It is what I draw.")
    calls = []

    def fake_sample(model, vocab_, prompts, params, progress=None):
        calls.append((prompts, params))
        if prompts[0][-1] == vocab.boi:  # an opened image: its codes
            return [drawn[k] + [vocab.eoi] for k in range(len(prompts))]
        greedy = [words + [vocab.boi] + drawn[k] + [vocab.eoi, vocab.eos] for k in range(2)]
        return greedy + [words * 20 + [vocab.boi]]  # the third writes on past caption_max_tokens

    monkeypatch.setattr(knowledge, "sample", fake_sample)
    opened = knowledge.entity_t2i(None, tokenizer, items, entities, cfg.eval, 32)
    cfg.eval.entity_describe_first = True
    described = knowledge.entity_t2i(None, tokenizer, items, entities, cfg.eval, 32)
    (first, p_opened), (greedy, p_greedy), (after, p_after) = calls
    assert [p[:-1] for p in first] == greedy and all(p[-1] == vocab.boi for p in first)
    assert after == [p + words + [vocab.boi] for p in greedy[:2]]  # the image follows the model's own words
    assert p_greedy.temperature == 0 and p_greedy.max_new_tokens == cfg.eval.caption_max_tokens + hw + 2
    assert p_opened == p_after and p_after.max_new_tokens == hw and p_after.temperature == cfg.eval.t2i_temperature
    for d, o in zip(described["examples"][:2], opened["examples"][:2]):  # the image after the words, decoded alike
        assert np.array_equal(np.asarray(d["image"]), np.asarray(o["image"])) and d["right"] == o["right"]
        assert d["written"] == "It is what I draw." and o["written"] == ""
    assert not np.array_equal(np.asarray(described["examples"][0]["image"]), np.asarray(opened["examples"][1]["image"]))
    third = described["examples"][2]
    assert third["image"] is None and not third["right"] and opened["examples"][2]["image"] is not None
    assert described["items"] == 3 and described["accuracy"] == sum(e["right"] for e in described["examples"]) / 3
    from mmgen.eval.report import _knowledge_section

    metrics = {"entities": len(entities), "entities_head": 0, "knowledge_retrieval_t2i_accuracy_tail": 0.0}
    page = _knowledge_section(metrics, {"runs": {"retrieval": {"t2i": {"tail": described}}}, "recall": {}})
    assert page.count("<img") == 2 and "(no image drawn)" in page and page.count("<i>It is what I draw.</i>") == 2


def test_entity_steps_measures_each_named_group_and_names_a_missing_one(run, tmp_path):
    """benchmarks/entity_steps.py: one line per checkpoint and entity group (words, then drawing from the true
    words, each with items and interval); a group the run has no items of is one error line naming those it has."""
    import torch.distributed.checkpoint as dcp

    from mmgen.model.checkpoint import save_model_description

    vocab = load_run_tokenizer(run).vocab
    pretrain = tmp_path / "pretrain"
    model_cfg = ModelConfig(dim=32, n_layers=1, n_heads=2, max_seq_len=512)
    save_model_description(str(pretrain), model_cfg, vocab.size)
    torch.manual_seed(0)
    model = Transformer(model_cfg, vocab.size)
    model.init_weights()
    dcp.save(model.state_dict(), checkpoint_id=str(pretrain / "checkpoint" / "step-2"), no_dist=True)
    small = ("--eval.entity_items", "2", "--eval.caption_max_tokens", "8", "--eval.t2i_cfg_scale", "0")
    done = cli("benchmarks/entity_steps.py", Path(run.root), *small, "--groups", "head,tail", str(pretrain))
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if " step 2, " in line]
    assert [line.split(" step 2, ")[1].split(":")[0] for line in lines] == ["head", "tail"]
    for line in lines:
        for figure in ("words exact", "shapes stated", "drawn right from the true words"):
            share, interval = line.split(figure + " ")[1].split(" [", 1)
            lo, hi = (float(x) for x in interval.split("]")[0].split(", "))
            assert 0 <= lo <= float(share) <= hi <= 1
    missing = cli("benchmarks/entity_steps.py", Path(run.root), *small, "--groups=tail,nonesuch", str(pretrain))
    assert missing.returncode != 0 and "Traceback" not in missing.stderr
    assert "nonesuch" in missing.stderr and "tail" in missing.stderr.split("there are:")[1]
