"""Scoring knowledge of entities exactly, and the recall of their defining documents."""

from __future__ import annotations

import numpy as np

from mmgen.config.schema import WorldConfig
from mmgen.data.entities import anchors, entity_caption, place_entity, world_entities
from mmgen.data.shapes_world import place_shape, render_scene
from mmgen.data.token_shards import TokenShards, TokenShardWriter
from mmgen.eval.knowledge import entity_shown, named_entities, pick_items
from mmgen.eval.scene_analyser import analyse_scene
from mmgen.retrieval.bank_documents import BankDocuments
from mmgen.retrieval.evaluation import defining_document_recall
from mmgen.retrieval.memory_bank import MemoryBank
from mmgen.tokenizers.vocab import Vocab

ENTITIES = world_entities(WorldConfig(entities=80))


def test_an_entity_image_is_scored_exactly_on_rendered_ground_truth():
    for entity in ENTITIES:
        others = [e for e in ENTITIES if e is not entity]
        for anchor in anchors(entity):
            read = analyse_scene(render_scene(place_entity(entity, anchor, "white", 32), 32))
            assert entity_shown(read, entity)
            assert not any(entity_shown(read, other) for other in others)  # every look names one entity
        scene = place_entity(entity, anchors(entity)[0], "black", 32)
        free = [p for p in ("bottom right", "top left") if p not in {s["position"] for s in scene["shapes"]}][0]
        cluttered = {**scene, "shapes": [*scene["shapes"], place_shape("square", "red", "large", free, 32)]}
        assert not entity_shown(analyse_scene(render_scene(cluttered, 32)), entity)  # clutter buys nothing
        recoloured = {**scene, "shapes": [{**scene["shapes"][0], "color": "green" if scene["shapes"][0]["color"] != "green"
                                           else "red"}, *scene["shapes"][1:]]}  # fmt: skip
        assert not entity_shown(analyse_scene(render_scene(recoloured, 32)), entity)


def test_a_caption_is_scored_by_the_entity_it_names():
    names = [e["name"] for e in ENTITIES]
    entity, other = ENTITIES[0], ENTITIES[1]
    caption = "It shows " + entity_caption(entity, "top", "white") + "."
    assert named_entities(caption, names) == [entity["name"]]
    assert named_entities(f"It shows a {other['name'].lower()} and a {entity['name']}.", names) == [
        other["name"], entity["name"]]
    assert named_entities(f"It shows a {entity['name']}s at the top.", names) == []  # whole words only
    assert named_entities("It shows a large red circle.", names) == []


def test_items_are_picked_per_group_reproducibly():
    items = [{"entity": f"E{i}", "group": "head" if i < 5 else "tail", "caption": "", "scene": {}} for i in range(30)]
    record = {"items": {"heldout": items}}
    picked = pick_items(record, "heldout", 4, seed=0)
    assert [len(picked[g]) for g in ("head", "tail")] == [4, 4]
    assert all(i["group"] == g for g in picked for i in picked[g])
    assert picked == pick_items(record, "heldout", 4, seed=0) and picked != pick_items(record, "heldout", 4, seed=1)
    assert [len(v) for v in pick_items(record, "heldout", 0, seed=0).values()] == [5, 25]


VOCAB = Vocab.build(text_vocab_size=40, codebook_size=8, grid=(2, 2))


def _shards(folder, docs) -> TokenShards:
    writer = TokenShardWriter(str(folder), vocab_size=VOCAB.size, tokens_per_shard=100)
    for d in docs:
        writer.add(list(map(int, d)), {})
    writer.close()
    return TokenShards(str(folder))


def _doc(words) -> np.ndarray:
    return np.array([VOCAB.bos, *(VOCAB.text_to_id(w) for w in words), VOCAB.eos])


def test_defining_document_recall_counts_hits_in_the_top_k(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    common = list(range(0, 10))
    train = [_doc(rng.choice(common, 6).tolist()) for _ in range(30)]
    definitions = [_doc([20 + i, 20 + i, *rng.choice(common, 3).tolist()]) for i in range(10)]
    documents = BankDocuments([_shards(tmp_path / "train", train), _shards(tmp_path / "bank", definitions)])
    queries = [_doc([20 + i, *rng.choice(common, 2).tolist()]).tolist() for i in range(10)]
    targets = [30 + i for i in range(10)]
    # the index answers query i with its definition at rank i // 2 (ranks 0..4), padding with training documents
    ranked = np.array([[*range(i // 2), 30 + i, *range(10, 20)][:6] for i in range(10)])

    class Bank:
        def search(self, q, k):
            return np.zeros((len(q), k), np.float32), ranked[:, :k]

    monkeypatch.setattr("mmgen.retrieval.evaluation.embed_documents", lambda enc, docs, vocab: np.zeros((len(docs), 2)))
    report = defining_document_recall(queries, targets, encoder=None, bank=Bank(), documents=documents, vocab=VOCAB,
                                      ks=(1, 3, 5))  # fmt: skip
    assert report["dual_encoder"]["recall@1"] == 0.2 and report["dual_encoder"]["recall@3"] == 0.6
    assert report["dual_encoder"]["recall@5"] == 1.0 and report["dual_encoder"]["items"] == 10
    lo, hi = report["dual_encoder"]["recall@1_ci95"]
    assert lo < 0.2 < hi
    # the name's piece is in the query and its definition only: tf-idf finds every definition first
    assert report["bag_of_words"]["recall@1"] == 1.0
    assert report["random"]["recall@5"] <= 0.5
    assert defining_document_recall([], [], encoder=None, bank=Bank(), documents=documents, vocab=VOCAB) == {}


def test_defining_document_recall_reads_bank_ids_from_a_faiss_index(tmp_path, monkeypatch):
    vectors = np.eye(8, dtype=np.float32)
    bank = MemoryBank.build(vectors, doc_ids=np.arange(8)[::-1].copy())  # row r holds bank document 7 - r
    documents = BankDocuments([_shards(tmp_path / "t", [_doc([i]) for i in range(8)])])
    # a query for word w embeds as row w of the index, which holds document 7 - w
    monkeypatch.setattr("mmgen.retrieval.evaluation.embed_documents",
                        lambda enc, docs, vocab: vectors[[int(d[1]) - VOCAB.text_to_id(0) for d in docs]])
    report = defining_document_recall([_doc([3]), _doc([5])], [4, 5], encoder=None, bank=bank, documents=documents,
                                      vocab=VOCAB, ks=(1,))  # fmt: skip
    assert report["dual_encoder"]["recall@1"] == 0.5
