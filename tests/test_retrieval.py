import numpy as np
import pytest
import torch

from mmgen.config.schema import RetrievalConfig
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


def test_neighbour_table_round_trip_and_length_check(tmp_path):
    path = str(tmp_path / "neighbours.npy")
    save_neighbours(path, np.array([[1, -1], [0, 2]]), {"k": 2})
    assert load_neighbours(path, 2).tolist() == [[1, -1], [0, 2]]
    with pytest.raises(ValueError, match="lists neighbours of 2 documents"):
        load_neighbours(path, 3)
    with pytest.raises(FileNotFoundError):
        load_neighbours(str(tmp_path / "absent.npy"), 2)


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


def test_alignment_filter_drops_mismatched_pairs():
    from mmgen.retrieval.curation import alignment_filter

    keep, scores = alignment_filter(ColourEmbedder(), [solid((255, 0, 0)), solid((0, 0, 255))], ["a red thing", "a green thing"], 0.5)
    assert keep.tolist() == [True, False] and scores[0] > scores[1]


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
    from mmgen.retrieval.augment import RetrievalAugmented

    writer = TokenShardWriter(str(tmp_path), vocab_size=VOCAB.size, tokens_per_shard=100)
    docs = [doc([1, 2], [[1, 2, 3, 4]]), doc([5], [[0, 0, 0, 0]]), doc([7, 8, 9], [])]
    for d in docs:
        writer.add(d.tolist(), {})
    writer.close()
    shards = TokenShards(str(tmp_path))
    view = RetrievalAugmented(shards, shards, np.array([[1, 2], [-1, -1], [0, -1]]), bos=VOCAB.bos, eos=VOCAB.eos,
                              sep=VOCAB.sep, retrieved_weight=0.25)
    seq = view[0]
    expected = [VOCAB.bos, *docs[1][1:-1], VOCAB.sep, *docs[2][1:-1], VOCAB.sep, *docs[0][1:]]
    assert seq.tolist() == expected
    w = view.weights(0)
    prefix = 1 + (len(docs[1]) - 2) + 1 + (len(docs[2]) - 2) + 1
    assert (w[:prefix] == 0.25).all() and (w[prefix:] == 1).all()
    assert view[1].tolist() == docs[1].tolist()  # no neighbours: the document itself


def test_packed_batches_carry_retrieval_weights(tmp_path):
    from mmgen.data.packing import IGNORE_INDEX, PackedBatches
    from mmgen.data.token_shards import TokenShards, TokenShardWriter
    from mmgen.retrieval.augment import RetrievalAugmented

    writer = TokenShardWriter(str(tmp_path), vocab_size=VOCAB.size, tokens_per_shard=1000)
    docs = [doc([1 + i, 2, 3], [[i % 16, 1, 2, 3]]) for i in range(6)]
    for d in docs:
        writer.add(d.tolist(), {})
    writer.close()
    shards = TokenShards(str(tmp_path))
    view = RetrievalAugmented(shards, shards, np.array([[(i + 1) % 6, -1] for i in range(6)]), bos=VOCAB.bos,
                              eos=VOCAB.eos, sep=VOCAB.sep, retrieved_weight=0.5)
    batch, labels = next(iter(PackedBatches(view, seq_len=40, batch_size=2, pad_id=VOCAB.pad)))
    w = batch["loss_weights"]
    assert w.shape == labels.shape
    assert set(w[labels != IGNORE_INDEX].unique().tolist()) == {0.5, 1.0}
    assert (w[labels == IGNORE_INDEX] == 0).all()
    plain, _ = next(iter(PackedBatches(shards, seq_len=40, batch_size=2, pad_id=VOCAB.pad)))
    assert "loss_weights" not in plain
