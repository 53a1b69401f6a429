import json

import numpy as np
import pytest
import torch

from mmgen.data.packing import IGNORE_INDEX, PackedBatches
from mmgen.data.reading import SAMPLING_KEY
from mmgen.files import CorruptFileError
from mmgen.data.token_shards import TokenShardError, TokenShards, TokenShardWriter, write_manifest, write_mixture


def write_docs(folder, docs, tokens_per_shard=50):
    writer = TokenShardWriter(str(folder), vocab_size=1000, tokens_per_shard=tokens_per_shard)
    for i, d in enumerate(docs):
        writer.add(d, {"row": i})
    return writer.close()


@pytest.fixture
def docs():
    rng = np.random.default_rng(0)
    return [list(rng.integers(1, 999, size=int(rng.integers(3, 30)))) for _ in range(40)]


def test_shards_round_trip_and_metadata(tmp_path, docs):
    manifest = write_docs(tmp_path, docs)
    assert len(manifest["shards"]) > 1 and manifest["documents"] == len(docs)
    shards = TokenShards(str(tmp_path))
    assert len(shards) == len(docs)
    for i, d in enumerate(docs):
        assert shards[i].tolist() == d and shards.metadata(i) == {"row": i}
    assert not list(tmp_path.glob("*.tmp"))


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(TokenShardError, match="no token shards"):
        TokenShards(str(tmp_path / "absent"))


def test_packed_rows_hold_whole_documents_with_in_document_labels(tmp_path, docs):
    write_docs(tmp_path, docs)
    batches = PackedBatches(TokenShards(str(tmp_path)), seq_len=64, batch_size=2, pad_id=0, infinite=False)
    seen = []
    for inputs, labels in batches:
        for row in range(2):
            ids, lab, doc = inputs["input"][row], labels[row], inputs["document_ids"][row]
            pos = inputs["positions"][row]
            for d in doc.unique():
                sel = (doc == d) & (lab != IGNORE_INDEX)
                if sel.any():
                    tokens = torch.cat([ids[sel], lab[sel][-1:]]).tolist()
                    seen.append(tuple(tokens))
                    assert pos[doc == d][0] == 0
    assert set(seen) <= {tuple(d) for d in docs}
    assert len(set(seen)) >= len(docs) - 6  # only the tail that fills no full batch is left over


def test_ranks_partition_documents(tmp_path, docs):
    write_docs(tmp_path, docs)
    shards = TokenShards(str(tmp_path))
    taken = [set(PackedBatches(shards, seq_len=64, batch_size=1, pad_id=0, dp_rank=r, dp_world_size=2).streams[0].order) for r in range(2)]
    assert not taken[0] & taken[1] and len(taken[0] | taken[1]) == len(docs)


def test_resume_reads_the_same_batches(tmp_path, docs):
    write_docs(tmp_path, docs)
    shards = TokenShards(str(tmp_path))
    full = PackedBatches(shards, seq_len=48, batch_size=2, pad_id=0, seed=3)
    it = iter(full)
    reference = [next(it) for _ in range(12)]  # runs past one epoch
    partial = PackedBatches(shards, seq_len=48, batch_size=2, pad_id=0, seed=3)
    it = iter(partial)
    for _ in range(5):
        next(it)
    state = partial.state_dict()
    resumed = PackedBatches(shards, seq_len=48, batch_size=2, pad_id=0, seed=3)
    resumed.load_state_dict(state)
    it = iter(resumed)
    for ref in reference[5:]:
        got = next(it)
        assert torch.equal(got[0]["input"], ref[0]["input"]) and torch.equal(got[1], ref[1])


def test_overlong_documents_are_truncated_and_counted(tmp_path):
    write_docs(tmp_path, [list(range(1, 101)), list(range(1, 11))])
    batches = PackedBatches(TokenShards(str(tmp_path)), seq_len=32, batch_size=1, pad_id=0, infinite=False)
    rows = list(batches)
    assert batches.truncated_documents == 1
    assert rows[0][0]["input"][0].tolist() == list(range(1, 33))


def write_component(folder, n_docs, token, length, hashes=None):
    writer = TokenShardWriter(str(folder), vocab_size=1000, tokens_per_shard=60)
    for i in range(n_docs):
        writer.add([token] * length, {"source": f"src-{token}", "row": i},
                   content_hash=0 if hashes is None else hashes[i])
    writer.finish()
    return write_manifest(str(folder), writer.shards, vocab_size=1000, sources=writer.sources, dedup=True)


def mixture(tmp_path, weights):
    write_component(tmp_path / "a", 30, 7, 9)  # short documents
    write_component(tmp_path / "b", 5, 8, 25)  # a small corpus of long ones: it repeats
    write_mixture(str(tmp_path), [{"folder": "a", "weight": weights[0]}, {"folder": "b", "weight": weights[1]}])
    return TokenShards(str(tmp_path))


@pytest.mark.parametrize("weights", [(0.5, 0.5), (0.8, 0.2)])
def test_mixture_follows_token_weights(tmp_path, weights):
    shards = mixture(tmp_path, weights)
    assert shards.is_mixture and len(shards) == 35 and shards.provenance(31) == ("src-8", 1)
    batches = PackedBatches(shards, seq_len=64, batch_size=4, pad_id=0, seed=0)
    counts = {7: 0, 8: 0}
    it = iter(batches)
    for _ in range(40):
        inputs, labels = next(it)
        for token in counts:
            counts[token] += int((inputs["input"] == token).sum())
    share = counts[7] / (counts[7] + counts[8])
    assert abs(share - weights[0]) < 0.03, share


def test_mixture_state_resumes_exactly(tmp_path):
    shards = mixture(tmp_path, (0.6, 0.4))
    reference = PackedBatches(shards, seq_len=48, batch_size=2, pad_id=0, seed=5, dp_rank=1, dp_world_size=2)
    it = iter(reference)
    expected = [next(it) for _ in range(15)]
    partial = PackedBatches(shards, seq_len=48, batch_size=2, pad_id=0, seed=5, dp_rank=1, dp_world_size=2)
    it = iter(partial)
    for _ in range(6):
        next(it)
    state = json.loads(json.dumps(partial.state_dict()))  # the trainer stores it as JSON
    resumed = PackedBatches(shards, seq_len=48, batch_size=2, pad_id=0, seed=5, dp_rank=1, dp_world_size=2)
    resumed.load_state_dict(state)
    it = iter(resumed)
    for ref in expected[6:]:
        got = next(it)
        assert torch.equal(got[0]["input"], ref[0]["input"]) and torch.equal(got[0]["document_ids"], ref[0]["document_ids"])


def test_cross_shard_duplicates_are_marked_and_never_loaded(tmp_path):
    manifest = write_component(tmp_path, 12, 5, 20, hashes=[1, 2, 3, 1, 4, 2, 0, 0, 5, 6, 5, 7])
    assert len(manifest["shards"]) > 1 and manifest["duplicates"] == 3
    shards = TokenShards(str(tmp_path))
    assert shards.duplicates.tolist() == [3, 5, 10]  # later copies; hash 0 means "not hashed"
    order = PackedBatches(shards, seq_len=32, batch_size=1, pad_id=0).streams[0].order
    assert sorted(order.tolist()) == [0, 1, 2, 4, 6, 7, 8, 9, 11]


def test_old_single_corpus_state_still_loads(tmp_path, docs):
    write_docs(tmp_path, docs)
    batches = PackedBatches(TokenShards(str(tmp_path)), seq_len=48, batch_size=2, pad_id=0)
    batches.load_state_dict({"epoch": 1, "cursor": 3, "truncated_documents": 0})
    assert batches.streams[0].epoch == 1 and batches.streams[0].cursor == 3


def test_another_world_size_restarts_each_corpus_at_its_earliest_epoch(tmp_path, docs):
    write_docs(tmp_path, docs)
    shards = TokenShards(str(tmp_path))

    def loader(rank, world):
        return PackedBatches(shards, seq_len=64, batch_size=2, pad_id=0, seed=3, dp_rank=rank, dp_world_size=world)

    two = [loader(r, 2) for r in range(2)]
    for batches, n in zip(two, (5, 1)):  # rank 0 reads into a later epoch than rank 1
        it = iter(batches)
        for _ in range(n):
            next(it)
    states = [b.state_dict() for b in two]
    epochs = [s["streams"][0]["epoch"] for s in states]
    assert epochs[0] > epochs[1] and states[1]["streams"][0]["cursor"] > 0
    one = loader(0, 1)
    one.restart_epochs(states)
    assert one.streams[0].state() == {"epoch": epochs[1], "cursor": 0, "tokens": 0}
    fresh = loader(0, 1)
    fresh.streams[0].load({"epoch": epochs[1], "cursor": 0})
    a, b = next(iter(one)), next(iter(fresh))
    assert torch.equal(a[0]["input"], b[0]["input"])  # the epoch starts over from its first document


def sampled_mixture(tmp_path):
    """Component ``a``: 40 documents, the first 20 (token 7) drawn with probability 0.25, the rest (token 9)
    always; component ``b``: plain (token 8)."""
    writer = TokenShardWriter(str(tmp_path / "a"), vocab_size=1000, tokens_per_shard=60)
    for i in range(40):
        writer.add([7 if i < 20 else 9] * 10, {"row": i, **({SAMPLING_KEY: 0.25} if i < 20 else {})})
    writer.finish()
    write_manifest(str(tmp_path / "a"), writer.shards, vocab_size=1000)
    write_component(tmp_path / "b", 10, 8, 10)
    write_mixture(str(tmp_path), [{"folder": "a", "weight": 0.5}, {"folder": "b", "weight": 0.5}])
    return TokenShards(str(tmp_path))


def test_sampling_probabilities_draw_each_pass_anew(tmp_path):
    shards = sampled_mixture(tmp_path)
    entries = [s.get("sampling", False) for s in TokenShards(str(tmp_path / "a")).manifest["shards"]]
    assert entries[0] and not entries[-1]  # only shards holding a probability below 1 get a sampling file
    p = shards.sampling_probabilities()
    assert p.tolist() == [0.25] * 20 + [1.0] * 30 and TokenShards(str(tmp_path / "b")).sampling_probabilities() is None
    stream = PackedBatches(shards, seq_len=64, batch_size=1, pad_id=0, seed=1).streams[0]
    passes = [set(stream._epoch_order(e).tolist()) for e in range(200)]
    assert all(set(range(20, 40)) <= drawn for drawn in passes)  # probability 1: in every pass
    share = np.mean([len(drawn & set(range(20))) / 20 for drawn in passes])
    assert abs(share - 0.25) < 0.02, share
    assert len(set().union(*passes) & set(range(20))) == 20  # nothing is dropped for good
    # the ranks split the same draw of each pass
    ranks = [PackedBatches(shards, seq_len=64, batch_size=1, pad_id=0, seed=1, dp_rank=r, dp_world_size=2).streams[0]
             for r in range(2)]  # fmt: skip
    for e in range(5):
        assert set(ranks[0]._epoch_order(e)) | set(ranks[1]._epoch_order(e)) == set(stream._epoch_order(e))


def test_sampled_corpus_keeps_its_token_share_and_resumes_exactly(tmp_path):
    shards = sampled_mixture(tmp_path)
    reference = PackedBatches(shards, seq_len=40, batch_size=2, pad_id=0, seed=2)
    it = iter(reference)
    expected = [next(it) for _ in range(200)]  # about 30 passes over component a
    tokens = torch.cat([inputs["input"] for inputs, _ in expected])
    counts = {t: int((tokens == t).sum()) for t in (7, 8, 9)}
    assert abs((counts[7] + counts[9]) / sum(counts.values()) - 0.5) < 0.05  # the mixture's share holds
    assert 0.16 < counts[7] / (counts[7] + counts[9]) < 0.24, counts  # 20 × 0.25 of every 25 drawn: 0.2
    partial = PackedBatches(shards, seq_len=40, batch_size=2, pad_id=0, seed=2)
    it = iter(partial)
    for _ in range(17):
        next(it)
    resumed = PackedBatches(shards, seq_len=40, batch_size=2, pad_id=0, seed=2)
    resumed.load_state_dict(json.loads(json.dumps(partial.state_dict())))
    it = iter(resumed)
    for ref in expected[17:60]:
        assert torch.equal(next(it)[0]["input"], ref[0]["input"])


def test_a_bad_sampling_file_is_a_clear_error(tmp_path):
    sampled_mixture(tmp_path)
    first = TokenShards(str(tmp_path / "a")).manifest["shards"][0]["name"]
    np.save(tmp_path / "a" / f"{first}.sampling.npy", np.array([0.5, 0.0], dtype=np.float32))
    with pytest.raises(CorruptFileError, match=r"sampling.npy is not a readable token-shard sampling file.*\(0, 1\]"):
        TokenShards(str(tmp_path)).sampling_probabilities()
