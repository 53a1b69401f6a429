"""The hybrid retriever's lexical stage: BM25 over whole words, the names the bank corpus defines, and how the
named documents and the dense candidates are merged (tests/test_memory_edits.py runs it on a tiny world)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mmgen.config.paths import StaleInputError
from mmgen.files import CorruptFileError
from mmgen.retrieval.evaluation import hybrid_ranking
from mmgen.retrieval.lexical import FILES, LexicalIndex, proper_nouns, words
from mmgen.retrieval.name_lookup import NameLookup
from mmgen.retrieval.selection import choose_neighbours

DEFINITIONS = [
    "This is a Zorbel. A Zorbel is a large green triangle above a small red circle.",
    "This is a Kobu. A Kobu is a small red circle.",
    "This is a Stuskonin. A Stuskonin is a large blue square to the left of a small red circle.",
]


def test_words_are_whole_lower_cased_runs_of_letters_and_digits():
    assert words("Draw a Zorbel at the top-left, on a white background!") == [
        "draw", "a", "zorbel", "at", "the", "top", "left", "on", "a", "white", "background"]  # fmt: skip


def test_proper_nouns_are_words_capitalised_inside_a_sentence():
    assert proper_nouns(DEFINITIONS[0]) == {"zorbel"}
    assert proper_nouns("Look at this picture. It shows a Kobu! Then the Kobu moves.") == {"kobu"}
    assert proper_nouns("A red circle. This is red.") == set()


def test_bm25_ranks_a_rare_word_above_the_common_words_a_query_shares():
    texts = ["Draw a Zorbel at the top.", "Draw a red circle at the top.", "Draw a blue square at the top.",
             "a red circle at the bottom", "a Zorbel"]  # fmt: skip
    index = LexicalIndex.build(texts)
    scores, ids = index.search(["draw a zorbel at the top left"], 5)
    assert ids[0, 0] == 0  # the rare word and the template
    assert list(ids[0]).index(4) < list(ids[0]).index(3)  # the rare word alone outweighs three common ones
    assert list(scores[0]) == sorted(scores[0], reverse=True)
    # one word of the same document: the rarer the word, the more it counts (its idf)
    alone = index.scores(["zorbel", "draw", "a"])[:, 0]
    assert alone[0] > alone[1] > alone[2] > 0  # a word in every document still counts a little (Lucene's idf)


def test_bm25_is_lucenes_form_with_the_given_k1_and_b():
    index = LexicalIndex.build(["kobu kobu x", "y"], k1=0.9, b=0.4)
    idf = np.log(1 + (2 - 1 + 0.5) / (1 + 0.5))  # kobu: in 1 of 2 documents
    tf, length, mean_length = 2, 3, 2
    expected = idf * tf / (tf + 0.9 * (1 - 0.4 + 0.4 * length / mean_length))
    assert np.isclose(index.scores(["kobu"])[0, 0], expected, rtol=1e-6)
    assert np.array_equal(index.scores(["kobu kobu Kobu"]), index.scores(["kobu"]))  # a query counts a word once


def test_bm25_over_no_words_finds_nothing():
    for texts in ([], ["", "!"]):
        scores, ids = LexicalIndex.build(texts).search(["a red circle"], 2)
        assert (ids == -1).all() and (scores == 0).all()


def test_bm25_gives_no_result_for_a_document_sharing_no_word():
    index = LexicalIndex.build(["a red circle", "a blue square"])
    scores, ids = index.search(["red", "green triangle", ""], 3)
    assert list(ids[0]) == [0, -1, -1] and scores[0, 0] > 0 and scores[0, 1] == 0
    assert (ids[1:] == -1).all()


def test_bm25_saturates_term_frequency_and_normalises_length():
    index = LexicalIndex.build(["kobu", "kobu kobu", "kobu kobu kobu kobu kobu kobu kobu kobu", "kobu x y z w v u t"])
    s = index.scores(["kobu"])[0]
    assert s[1] > s[0] and s[2] - s[1] < s[1] - s[0]  # more mentions count, each less
    assert s[0] > s[3]  # one mention in a short document beats one in a long one


def test_a_lexical_index_survives_save_and_load(tmp_path):
    index = LexicalIndex.build(DEFINITIONS)
    index.save(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(FILES)  # no temporary file left behind
    again = LexicalIndex.load(str(tmp_path))
    assert again.terms == index.terms and np.array_equal(again.scores(["red kobu"]), index.scores(["red kobu"]))
    assert np.array_equal(again.document_frequency, index.document_frequency)
    assert LexicalIndex.load(str(tmp_path / "missing")) is None


def test_a_lexical_index_saved_before_bm25s_asks_for_a_rebuild(tmp_path):
    # a bank whose name lookup mmgen's own BM25 wrote: its terms and a .npz of postings beside the lookup's record
    folder = tmp_path / "names"
    folder.mkdir()
    (folder / "lexical_terms.json").write_text(json.dumps({"k1": 1.2, "b": 0.75, "terms": {"kobu": 0}}))
    np.savez(folder / "lexical_postings.npz", indptr=np.array([0, 1]), columns=np.array([0]),
             weights=np.array([1.0], dtype=np.float32), idf=np.array([0.7], dtype=np.float32))  # fmt: skip
    (folder / "lookup.json").write_text(json.dumps({"offset": 0, "names": ["kobu"]}))
    with pytest.raises(StaleInputError, match="older mmgen.*rerun retrieval/build_index.py"):
        LexicalIndex.load(str(folder))
    with pytest.raises(StaleInputError, match="older mmgen"):
        NameLookup.load(str(tmp_path))


def test_a_torn_lexical_index_is_a_clear_error(tmp_path):
    LexicalIndex.build(DEFINITIONS).save(str(tmp_path))
    data = tmp_path / FILES[0]
    data.write_bytes(data.read_bytes()[:20])
    with pytest.raises(CorruptFileError, match="not a readable bm25s index"):
        LexicalIndex.load(str(tmp_path))


def test_name_lookup_keys_on_defined_names_only():
    lookup = NameLookup.build(DEFINITIONS, offset=100)
    assert lookup.names == {"zorbel", "kobu", "stuskonin"}
    named = lookup.named(["Here is a drawing. Draw a ZORBEL at the top.", "Draw a red circle above a large square.",
                          "The Kobu moves to the left of the Stuskonin."], 3)  # fmt: skip
    assert list(named[0]) == [100, -1, -1]
    assert (named[1] == -1).all()  # colours, shapes and layouts are in many definitions and never capitalised
    assert sorted(named[2][:2]) == [101, 102] and named[2][2] == -1


def test_a_name_held_by_too_many_bank_documents_keys_none():
    texts = [*DEFINITIONS, "The Zorbel and the Kobu are friends.", "A Zorbel is green."]
    assert NameLookup.build(texts, offset=0, name_documents=2).names == {"kobu", "stuskonin"}
    assert NameLookup.build(texts, offset=0, name_documents=3).names == {"zorbel", "kobu", "stuskonin"}


def test_name_lookup_survives_save_and_load_and_remove(tmp_path):
    lookup = NameLookup.build(DEFINITIONS, offset=7)
    lookup.save(str(tmp_path))
    again = NameLookup.load(str(tmp_path))
    assert again.names == lookup.names and again.offset == 7
    assert (again.named(["a kobu"], 2) == lookup.named(["a kobu"], 2)).all()
    NameLookup.remove(str(tmp_path))
    assert NameLookup.load(str(tmp_path)) is None


def test_hybrid_ranking_puts_named_documents_first_without_repeats():
    named = np.array([[9, -1], [-1, -1]])
    dense = np.array([[3, 9, 4, 5], [3, 9, 4, 5]])
    assert hybrid_ranking(named, dense, 3).tolist() == [[9, 3, 4], [3, 9, 4]]


def test_named_neighbours_come_first_under_the_absolute_rules_only():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(6, 8)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    emb[5] = emb[0]  # document 5 is a near-duplicate of the query (document 0) in embedding space
    kw = dict(embeddings=emb, content_hashes=np.arange(6), multimodal=np.array([True] * 5 + [True]),
              query_hashes=np.array([0]), k=2, max_similarity=0.95)  # fmt: skip
    ids = np.array([[5, 1, 2, 3, 4]])
    sims = (emb[ids[0]] @ emb[0])[None]
    assert choose_neighbours(sims, ids, np.array([0]), **kw).tolist() == [[1, 2]]  # the near-duplicate is skipped
    # named, it comes first: what a query names is the knowledge it asks for, however alike the two look
    assert choose_neighbours(sims, ids, np.array([0]), named=np.array([[5, -1]]), **kw).tolist() == [[5, 1]]
    # the query itself and a document without both modalities are never named neighbours
    text_only = dict(kw, multimodal=np.array([True, True, True, False, True, True]))
    assert choose_neighbours(sims, ids, np.array([0]), named=np.array([[0, 3]]), **text_only).tolist() == [[1, 2]]
