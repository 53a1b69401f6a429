import numpy as np
import pytest
import torch

from mmgen.config.schema import RetrievalConfig
from mmgen.data.transforms import TrainingDocument
from mmgen.retrieval.documents import embed_documents, has_both_modalities, split_document
from mmgen.retrieval.encoder import DualEncoder, EncoderShape
from mmgen.retrieval.memory_bank import IndexSpec, MemoryBank
from mmgen.retrieval.neighbours import load_neighbours, save_neighbours
from mmgen.retrieval.selection import content_hash, select_neighbours
from mmgen.retrieval.training import recall_at_k, train_dual_encoder
from mmgen.tokenizers.vocab import Vocab

VOCAB = Vocab.build(text_vocab_size=50, codebook_size=16, grid=(2, 2))


def doc(text, grids):
    ids = [VOCAB.bos] + [VOCAB.text_to_id(t) for t in text]
    for g in grids:
        ids += [VOCAB.boi, *[VOCAB.code_to_id(c) for c in g], VOCAB.eoi]
    return np.array(ids + [VOCAB.eos])


def unit(rng, n, d):
    v = rng.normal(size=(n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_split_document_separates_text_and_grids():
    text, grids = split_document(doc([3, 4, 5], [[1, 2, 3, 4], [5, 6, 7, 8]]), VOCAB)
    assert text.tolist() == [3, 4, 5]
    assert grids.shape == (2, 2, 2) and grids[1].ravel().tolist() == [5, 6, 7, 8]
    assert has_both_modalities([doc([1], [[1, 1, 1, 1]]), doc([1], [])], VOCAB).tolist() == [True, False]


def test_document_embeddings_are_unit_and_query_dropout_perturbs():
    torch.manual_seed(0)
    encoder = DualEncoder(EncoderShape(text_vocab_size=50, codebook_size=16, grid=(2, 2), width=32, layers=1, embed_dim=8)).eval()
    docs = [doc(list(range(1, 20)), [[1, 2, 3, 4]]), doc([7, 8], []), doc([], [[0, 0, 1, 1]])]
    emb = embed_documents(encoder, docs, VOCAB)
    assert emb.shape == (3, 8) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    dropped = embed_documents(encoder, docs, VOCAB, query_dropout=0.5, seed=1)
    assert not np.allclose(emb[0], dropped[0])


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivfpq"])
def test_memory_bank_recall_and_persistence(kind, tmp_path):
    rng = np.random.default_rng(0)
    base = unit(rng, 4000, 32)
    queries = base[:50] + 0.01 * unit(rng, 50, 32)
    bank = MemoryBank.build(base, spec=IndexSpec(kind=kind, nlist=32, pq_m=8, nprobe=32))
    _, ids = bank.search(queries, 5)
    assert (ids[:, :5] == np.arange(50)[:, None]).any(axis=1).mean() >= 0.9
    bank.save(str(tmp_path / kind))
    again = MemoryBank.load(str(tmp_path / kind))
    assert np.array_equal(again.search(queries, 5)[1], ids)
    assert np.array_equal(again.centre, bank.centre) and np.allclose(bank.centre, base.mean(0), atol=1e-6)


def test_selection_skips_self_duplicates_unimodal_and_near_copies():
    rng = np.random.default_rng(1)
    emb = unit(rng, 6, 16)
    emb[1] = emb[0]  # exact duplicate content of 0 (same hash below)
    emb[2] = emb[0] * 0.999 + 0.001 * emb[3]  # near-copy
    emb[2] /= np.linalg.norm(emb[2])
    hashes = np.array([10, 10, 12, 13, 14, 15])
    multimodal = np.array([True, True, True, True, False, True])
    bank = MemoryBank.build(emb)
    table = select_neighbours(
        bank, emb[:1], np.array([0]), embeddings=emb, content_hashes=hashes, multimodal=multimodal,
        query_hashes=hashes[:1], k=3, candidates=6, max_similarity=0.95,
    )
    chosen = set(table[0][table[0] >= 0].tolist())
    assert chosen and not chosen & {0, 1, 2, 4}


def test_neighbour_table_round_trip_and_staleness_checks(tmp_path):
    from mmgen.config.paths import StaleInputError

    docs = random_docs(3, seed=1)
    shards = write_shards(tmp_path / "tokens", docs)
    path = str(tmp_path / "neighbours" / "train.npy")
    save_neighbours(path, np.array([[1, -1], [0, 2], [0, 1]]), {"k": 2}, shards)
    assert load_neighbours(path, shards).tolist() == [[1, -1], [0, 2], [0, 1]]
    with pytest.raises(StaleInputError, match="for 3 documents"):
        load_neighbours(path, write_shards(tmp_path / "more", docs + docs[:1]))
    # as many documents, other tokens (say a re-encode with a retrained tokenizer): refused too
    changed = [docs[0], docs[2], docs[1]]
    with pytest.raises(StaleInputError, match="other tokens"):
        load_neighbours(path, write_shards(tmp_path / "tokens2", changed))
    with pytest.raises(StaleInputError, match="other tokens"):  # a table from before fingerprints
        (tmp_path / "neighbours" / "train.json").unlink()
        load_neighbours(path, shards)
    with pytest.raises(FileNotFoundError):
        load_neighbours(str(tmp_path / "absent.npy"), shards)


def test_dual_encoder_learns_pairs_better_than_chance():
    # images: a 2x2 grid whose codes spell the caption's words; captions: those words
    rng = np.random.default_rng(0)
    codes = torch.from_numpy(rng.integers(0, 16, size=(256, 2, 2)))
    texts = [[int(c) + 1 for c in g.ravel()] for g in codes]
    shape = EncoderShape(text_vocab_size=50, codebook_size=16, grid=(2, 2), width=32, layers=1, embed_dim=16, max_text_tokens=8)
    cfg = RetrievalConfig(encoder_steps=150, encoder_batch_size=64, encoder_lr=3e-3)
    model = train_dual_encoder(codes, texts, shape, cfg, log=lambda _: None)
    with torch.inference_mode():
        from mmgen.retrieval.training import encoder_similarity

        sim = encoder_similarity(model, codes[:64], texts[:64])
    assert recall_at_k(sim, np.arange(64), ks=(5,))["recall@5"] > 0.3  # chance is 5/64
    assert content_hash(np.array([1, 2])) != content_hash(np.array([2, 1]))


class ColourEmbedder:
    """Images embed as their mean colour, texts as the colour word they name."""

    dim = 3
    WORDS = {"red": (1, 0, 0), "green": (0, 1, 0), "blue": (0, 0, 1)}

    def embed_images(self, images):
        v = np.array([np.asarray(im, dtype=np.float32).mean(axis=(0, 1)) for im in images])
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    def embed_texts(self, texts):
        v = np.array([next(self.WORDS[w] for w in self.WORDS if w in t) for t in texts], dtype=np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)


def solid(rgb):
    from PIL import Image

    return Image.new("RGB", (4, 4), rgb)


def test_alignment_scores_are_the_cosine_of_each_pair():
    from mmgen.retrieval.curation import alignment_scores

    e = ColourEmbedder()
    scores = alignment_scores(e.embed_images([solid((255, 0, 0)), solid((0, 0, 255))]), e.embed_texts(["a red thing", "a green thing"]))
    assert np.allclose(scores, [1.0, 0.0])


def test_assign_images_to_best_sentences_one_each():
    from mmgen.retrieval.curation import assign_images_to_sentences

    sentences = ["the sky is blue", "grass is green", "a red apple"]
    images = [solid((250, 10, 10)), solid((10, 10, 250)), solid((10, 250, 10))]
    assert assign_images_to_sentences(ColourEmbedder(), sentences, images).tolist() == [2, 0, 1]


def test_balance_by_cluster_caps_each_cluster():
    from mmgen.retrieval.curation import balance_by_cluster

    rng = np.random.default_rng(0)
    centres = unit(rng, 3, 8)
    x = np.concatenate([centres[0] + 0.01 * rng.normal(size=(90, 8)), centres[1] + 0.01 * rng.normal(size=(10, 8))]).astype(np.float32)
    keep, assignment = balance_by_cluster(x, clusters=2, cap=10)
    assert keep.sum() == 20 and all(np.sum(keep & (assignment == c)) == 10 for c in (0, 1))


def test_augmented_sequence_layout_and_weights(tmp_path):
    from mmgen.data.token_shards import TokenShards, TokenShardWriter
    from mmgen.retrieval.augment import RetrievalAugmentation

    writer = TokenShardWriter(str(tmp_path), vocab_size=VOCAB.size, tokens_per_shard=100)
    docs = [doc([1, 2], [[1, 2, 3, 4]]), doc([5], [[0, 0, 0, 0]]), doc([7, 8, 9], [])]
    for d in docs:
        writer.add(d.tolist(), {})
    writer.close()
    shards = TokenShards(str(tmp_path))
    augment = RetrievalAugmentation(shards, np.array([[1, 2], [-1, -1], [0, -1]]), bos=VOCAB.bos, eos=VOCAB.eos,
                                    sep=VOCAB.sep, retrieved_weight=0.25)  # fmt: skip
    augmented = augment(TrainingDocument(0, shards[0]))
    expected = [VOCAB.bos, *docs[1][1:-1], VOCAB.sep, *docs[2][1:-1], VOCAB.sep, *docs[0][1:]]
    assert augmented.tokens.tolist() == expected
    w = augmented.weights
    prefix = 1 + (len(docs[1]) - 2) + 1 + (len(docs[2]) - 2) + 1
    assert (w[:prefix] == 0.25).all() and (w[prefix:] == 1).all()
    assert augment(TrainingDocument(1, shards[1])).tokens.tolist() == docs[1].tolist()  # no neighbours: the document itself


def test_packed_batches_carry_retrieval_weights(tmp_path):
    from mmgen.data.packing import IGNORE_INDEX, PackedBatches
    from mmgen.data.token_shards import TokenShards, TokenShardWriter
    from mmgen.retrieval.augment import RetrievalAugmentation

    writer = TokenShardWriter(str(tmp_path), vocab_size=VOCAB.size, tokens_per_shard=1000)
    docs = [doc([1 + i, 2, 3], [[i % 16, 1, 2, 3]]) for i in range(6)]
    for d in docs:
        writer.add(d.tolist(), {})
    writer.close()
    shards = TokenShards(str(tmp_path))
    augment = RetrievalAugmentation(shards, np.array([[(i + 1) % 6, -1] for i in range(6)]), bos=VOCAB.bos,
                                    eos=VOCAB.eos, sep=VOCAB.sep, retrieved_weight=0.5)  # fmt: skip
    batch, labels = next(iter(PackedBatches(shards, transforms=[augment], seq_len=40, batch_size=2, pad_id=VOCAB.pad)))
    w = batch["loss_weights"]
    assert w.shape == labels.shape
    assert set(w[labels != IGNORE_INDEX].unique().tolist()) == {0.5, 1.0}
    assert (w[labels == IGNORE_INDEX] == 0).all()
    plain, _ = next(iter(PackedBatches(shards, seq_len=40, batch_size=2, pad_id=VOCAB.pad)))
    assert "loss_weights" not in plain


def write_shards(folder, docs):
    from mmgen.data.token_shards import TokenShards, TokenShardWriter

    writer = TokenShardWriter(str(folder), vocab_size=VOCAB.size, tokens_per_shard=60)
    for d in docs:
        writer.add(list(map(int, d)), {})
    writer.close()
    return TokenShards(str(folder))


def small_encoder(seed=0):
    torch.manual_seed(seed)
    shape = EncoderShape(text_vocab_size=50, codebook_size=16, grid=(2, 2), width=32, layers=1, embed_dim=8, max_text_tokens=8)
    return DualEncoder(shape).eval()


def random_docs(n, seed=0):
    rng = np.random.default_rng(seed)
    return [doc(rng.integers(0, 50, rng.integers(0, 12)).tolist(), rng.integers(0, 16, (rng.integers(0, 3), 4)).tolist())
            for _ in range(n)]


def test_rank_slices_are_whole_batches_and_embed_like_one_pass():
    from mmgen.retrieval.neighbours import rank_slice

    for n, world in ((23, 2), (23, 3), (4, 3), (0, 2), (40, 1)):
        parts = [rank_slice(n, 4, r, world) for r in range(world)]
        assert [i for p in parts for i in p] == list(range(n))
        assert all(p.start % 4 == 0 for p in parts if len(p))
    encoder, docs = small_encoder(), random_docs(23)
    whole = embed_documents(encoder, docs, VOCAB, batch_size=4, query_dropout=0.3, seed=5)
    pieces = [embed_documents(encoder, docs[p.start : p.stop], VOCAB, batch_size=4, query_dropout=0.3, seed=5, first_index=p.start)
              for p in (rank_slice(23, 4, r, 3) for r in range(3))]  # fmt: skip
    assert np.array_equal(np.concatenate(pieces), whole)  # bit for bit: dropout and batches do not depend on the split
    assert not np.allclose(whole, embed_documents(encoder, docs, VOCAB, batch_size=4))


def test_bank_built_on_two_ranks_matches_one(tmp_path):
    from mmgen.retrieval.neighbours import build_bank_and_neighbours

    train = write_shards(tmp_path / "train", random_docs(30, seed=1))
    heldout = write_shards(tmp_path / "heldout", random_docs(7, seed=2))
    cfg = RetrievalConfig(embed_batch_size=4, max_similarity=1.01, candidates=8)
    encoder = small_encoder()

    def build(out, rank=0, world=1, gather=None):
        splits = {"train": (train, str(out / "train.npy")), "heldout": (heldout, str(out / "heldout.npy"))}
        return build_bank_and_neighbours(encoder, VOCAB, train, splits, cfg, str(out / "bank"), log=lambda _: None,
                                         rank=rank, world=world, gather=gather)  # fmt: skip

    build(tmp_path / "one")
    # two ranks, run one after the other: rank 1's gathered pieces are queued for rank 0's gathers
    queued = []
    assert build(tmp_path / "two", rank=1, world=2, gather=lambda obj: queued.append(obj)) == {}
    assert not (tmp_path / "two").exists()  # only rank 0 writes
    report = build(tmp_path / "two", rank=0, world=2, gather=lambda obj: [obj, queued.pop(0)])
    assert report["train"]["filled"] > 0.5
    for name in ("train.npy", "heldout.npy", "bank/index.faiss", "bank/doc_ids.npy"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name


def test_image_safe_cut_never_ends_inside_an_image():
    from mmgen.retrieval.augment import image_safe_cut

    body = doc([1, 2], [[1, 2, 3, 4]])[1:-1].tolist() + [VOCAB.text_to_id(3)]  # t t BOI c c c c EOI t
    cuts = [image_safe_cut(np.array(body), limit, boi=VOCAB.boi, eoi=VOCAB.eoi) for limit in range(len(body) + 2)]
    assert cuts == [0, 1, 2, 2, 2, 2, 2, 2, 8, 9, 9]


def test_retrieved_prefix_gives_way_to_the_main_document(tmp_path):
    from mmgen.data.packing import PackedBatches
    from mmgen.retrieval.augment import RetrievalAugmentation, retrieved_prefix

    # bodies: main 11 text + EOS; neighbour 1: 3 text, an image (6), 1 text; neighbour 2: 3 text, an image
    docs = [doc(list(range(1, 12)), []), doc([1, 2, 3], [[1, 2, 3, 4]]), doc([5, 6, 7], [[0, 0, 0, 0]])]
    docs[1] = np.concatenate([docs[1][:-1], [VOCAB.text_to_id(9)], docs[1][-1:]])
    shards = write_shards(tmp_path, docs)
    table = np.array([[1, 2], [-1, -1], [-1, -1]])

    def augment(max_len):
        return RetrievalAugmentation(shards, table, bos=VOCAB.bos, eos=VOCAB.eos, sep=VOCAB.sep, retrieved_weight=0.5,
                                     max_len=max_len, vocab=VOCAB)  # fmt: skip

    def augmented(max_len):
        return augment(max_len)(TrainingDocument(0, shards[0]))

    full = augmented(None).tokens
    assert len(full) == 1 + 10 + 1 + 9 + 1 + 12 and augmented(len(full)).tokens.tolist() == full.tolist()
    main = docs[0][1:].tolist()
    for max_len in range(1, len(full)):
        seq, w = augmented(max_len).tokens, augmented(max_len).weights
        assert seq.tolist()[-len(main):] == main  # the main document is always whole
        prefix = seq[: len(seq) - len(main)]
        assert len(seq) <= max(max_len, 1 + len(main)) and (w[: len(prefix)] == 0.5).all() and (w[len(prefix):] == 1).all()
        # retrieved pieces: heads of neighbour 1 then 2, in order, each image whole
        pieces = np.split(prefix[1:], np.flatnonzero(prefix[1:] == VOCAB.sep) + 1)[:-1]
        bodies = [docs[1][1:-1], docs[2][1:-1]]
        for piece, b in zip(pieces, bodies):
            assert piece[-1] == VOCAB.sep and b[: len(piece) - 1].tolist() == piece[:-1].tolist()
            assert (piece == VOCAB.boi).sum() == (piece == VOCAB.eoi).sum()
    # neighbour 2 gives way first (its image, then all of it); then neighbour 1 its tail text, then its image
    b1, b2 = docs[1][1:-1].tolist(), docs[2][1:-1].tolist()
    assert augmented(33).tokens.tolist() == [VOCAB.bos, *b1, VOCAB.sep, *b2[:3], VOCAB.sep, *main]
    assert augmented(25).tokens.tolist() == [VOCAB.bos, *b1, VOCAB.sep, *main]
    assert augmented(23).tokens.tolist() == [VOCAB.bos, *b1[:9], VOCAB.sep, *main]
    assert augmented(22).tokens.tolist() == [VOCAB.bos, *b1[:3], VOCAB.sep, *main]
    # the packer no longer truncates the main document of an augmented sequence that fits its row alone
    for max_len, truncated in ((None, 1), (21, 0)):
        batches = PackedBatches(shards, transforms=[augment(max_len)], seq_len=20, batch_size=1, pad_id=VOCAB.pad,
                                infinite=False)  # fmt: skip
        list(batches)
        assert batches.truncated_documents == truncated
    with pytest.raises(ValueError, match="boi and eoi"):
        retrieved_prefix([docs[1]], bos=VOCAB.bos, eos=VOCAB.eos, sep=VOCAB.sep, max_len=5)


def test_retrieve_for_prompt_follows_training_rules(tmp_path):
    from mmgen.retrieval.query import load_retriever, retrieve_for_prompt
    from mmgen.retrieval.selection import centred

    docs = random_docs(40, seed=3)
    docs[5] = docs[0].copy()  # an exact duplicate of the prompt's document
    shards = write_shards(tmp_path / "train", docs)
    encoder = small_encoder()
    embeddings = embed_documents(encoder, docs, VOCAB)
    bank = MemoryBank.build(embeddings)
    both = has_both_modalities(docs, VOCAB)
    with pytest.raises(FileNotFoundError, match="train_encoder.py and retrieval/build_index.py first"):
        load_retriever(str(tmp_path / "encoder"), str(tmp_path / "bank"))
    encoder.save(str(tmp_path / "encoder"))
    bank.save(str(tmp_path / "bank"))
    encoder, bank = load_retriever(str(tmp_path / "encoder"), str(tmp_path / "bank"))

    def retrieve(prompt, **kw):
        return retrieve_for_prompt(prompt, encoder=encoder, bank=bank, documents=shards, vocab=VOCAB, **kw)

    found = retrieve(docs[0], k=3, candidates=40, max_similarity=1.01)
    assert len(found) == 3 and all(both[r.bank_id] for r in found)
    assert not {r.bank_id for r in found} & {0, 5}  # never an exact duplicate of the prompt
    assert [r.similarity for r in found] == sorted((r.similarity for r in found), reverse=True)
    assert all(np.array_equal(r.tokens, docs[r.bank_id]) for r in found)
    assert all(abs(r.similarity - float(embeddings[r.bank_id] @ embeddings[0])) < 1e-4 for r in found)
    # a prompt (no EOS) is not a duplicate by hash, but the same content is a near-copy
    strict = retrieve(docs[0][:-1], k=3, candidates=40, max_similarity=0.9, centred_similarity=False)
    ids = [r.bank_id for r in strict]
    assert ids and 0 not in ids and 5 not in ids and all(r.similarity <= 0.9 for r in strict)
    assert all(float(embeddings[a] @ embeddings[b]) <= 0.9 + 1e-4 for a in ids for b in ids if a != b)
    around = centred(embeddings, bank.centre)
    ids = [r.bank_id for r in retrieve(docs[0][:-1], k=3, candidates=40, max_similarity=0.5)]
    assert ids and 0 not in ids and 5 not in ids and all(around[j] @ around[0] <= 0.5 + 1e-4 for j in ids)
    assert all(float(around[a] @ around[b]) <= 0.5 + 1e-4 for a in ids for b in ids if a != b)
    assert retrieve(docs[0], k=0) == []
    with pytest.raises(ValueError, match="no text and no image"):
        retrieve([VOCAB.bos], k=2)
    with pytest.raises(ValueError, match="rerun retrieval/build_index.py"):
        retrieve_for_prompt(docs[0], encoder=encoder, bank=bank, documents=docs[:10], vocab=VOCAB, k=2)


def test_near_duplicate_tests_survive_a_weak_encoder_and_query_dropout():
    # a weak encoder: every document near one shared direction, so any two are above 0.95 in raw cosine
    rng = np.random.default_rng(0)
    n, dim = 40, 16
    raw = 10 * unit(rng, 1, dim) + unit(rng, n, dim)
    raw[1] = raw[0] + 0.05 * unit(rng, 1, dim)[0]  # document 1 is a near-copy of 0 (other tokens, other hash)
    dropped = raw + 0.6 * unit(rng, n, dim)  # query dropout moves a query further than that
    emb, queries = (x / np.linalg.norm(x, axis=1, keepdims=True) for x in (raw, dropped))
    bank = MemoryBank.build(emb)
    assert np.allclose(bank.centre, emb.mean(0), atol=1e-6)
    kw = dict(embeddings=emb, content_hashes=np.arange(n), multimodal=np.ones(n, bool), query_hashes=np.arange(n),
              k=2, candidates=n, max_similarity=0.95)  # fmt: skip
    assert (select_neighbours(bank, queries, np.arange(n), **kw) == -1).all()  # raw cosine: nothing qualifies
    only_centred = select_neighbours(bank, queries, np.arange(n), centre=bank.centre, **kw)
    assert 1 in only_centred[0]  # the dropped query no longer looks like the copy
    table = select_neighbours(bank, queries, np.arange(n), centre=bank.centre, clean_queries=emb, **kw)
    assert (table >= 0).mean() > 0.9
    assert 1 not in table[0] and 0 not in table[1] and not (table == np.arange(n)[:, None]).any()
    assert not any({0, 1} <= set(row.tolist()) for row in table)  # diversity: never the document and its copy


def test_prompt_with_context_takes_the_training_layout_and_cuts_the_context_first():
    from mmgen.retrieval.query import prompt_with_context

    first, second = doc([1, 2], []), doc([3], [[1, 2, 3, 4]])
    prompt = [VOCAB.bos, VOCAB.text_to_id(5)]
    context = [{"source": "a", "tokens": first.tolist()}, {"source": "b", "tokens": second.tolist()}]
    whole = prompt_with_context(prompt, context, VOCAB, seq_len=100, max_new_tokens=10)
    expected_prefix = [VOCAB.bos, *first[1:-1], VOCAB.sep, *second[1:-1], VOCAB.sep]
    assert whole.tokens == expected_prefix + prompt[1:] and whole.context_len == len(expected_prefix)
    assert [d["cut"] for d in whole.context] == [False, False] and whole.note == ""
    # room for 6 tokens of context (BOS and SEPs included): the first document whole, the second without its
    # image (never half of it)
    cut = prompt_with_context(prompt, context, VOCAB, seq_len=6 + (len(prompt) - 1) + 10 - 1, max_new_tokens=10)
    assert cut.tokens == [VOCAB.bos, *first[1:-1], VOCAB.sep, *second[1:2], VOCAB.sep, *prompt[1:]]
    assert [d["cut"] for d in cut.context] == [False, True] and "cut to 3 of 9 tokens" in cut.note
    assert prompt_with_context(prompt, [], VOCAB, seq_len=100, max_new_tokens=10).tokens == prompt
