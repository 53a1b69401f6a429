import numpy as np
import pytest
import torch

from mmgen.data.packing import IGNORE_INDEX, PackedBatches
from mmgen.data.token_shards import TokenShardError, TokenShards, TokenShardWriter


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
    taken = [set(PackedBatches(shards, seq_len=64, batch_size=1, pad_id=0, dp_rank=r, dp_world_size=2)._order) for r in range(2)]
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
