import numpy as np
import torch

import mmgen.train  # noqa: F401  (CPU compat before torchtitan)
from mmgen.train.components import MODALITY_SUMS, ModalityLoss


def make_loss(z=0.0):
    return ModalityLoss.Config(image_start=10, image_stop=20, z_loss_weight=z).build()


def test_modality_loss_splits_text_and_image_and_matches_cross_entropy():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 20)
    labels = torch.tensor([[1, 2, 12, 13, -100], [3, 15, -100, -100, 4]])
    loss_fn = make_loss()
    loss, metrics = loss_fn(logits, labels, torch.tensor(7.0))
    reference = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
    assert torch.allclose(loss, reference, atol=1e-6)
    text_sum, text_n, image_sum, image_n = metrics[MODALITY_SUMS].tolist()
    assert (text_n, image_n) == (4, 3)
    assert abs((text_sum + image_sum) / 7 - reference.item()) < 1e-5


def test_weights_scale_tokens_and_logging_keeps_main_documents():
    torch.manual_seed(0)
    logits = torch.randn(1, 4, 20)
    labels = torch.tensor([[1, 12, 2, 13]])
    loss_fn = make_loss()
    full, _ = loss_fn(logits, labels)
    half, metrics = loss_fn(logits, labels, loss_weights=torch.tensor([[0.0, 0.0, 1.0, 1.0]]))
    per_token = torch.nn.functional.cross_entropy(logits[0], labels[0], reduction="none")
    assert torch.allclose(half, per_token[2:].sum()) and torch.allclose(full, per_token.sum())
    _, text_n, _, image_n = metrics[MODALITY_SUMS].tolist()
    assert (text_n, image_n) == (1, 1)


def test_z_loss_adds_logsumexp_squared():
    logits = torch.randn(1, 3, 20)
    labels = torch.tensor([[1, 2, 3]])
    plain, _ = make_loss()(logits, labels)
    with_z, _ = make_loss(z=1e-2)(logits, labels)
    assert torch.allclose(with_z - plain, 1e-2 * torch.logsumexp(logits[0], -1).square().sum(), atol=1e-5)


def test_training_loader_mixes_by_weight_and_leaves_duplicates_out_with_cm3_and_condition_dropout(tmp_path):
    """The document transforms run inside each mixture component: weights and dedup hold with them on."""
    from mmgen.data.token_shards import TokenShardWriter, write_manifest, write_mixture
    from mmgen.tokenizers.vocab import Vocab
    from mmgen.train.components import PackedDataLoader

    vocab = Vocab.build(text_vocab_size=20, codebook_size=8, grid=(1, 2))
    vocab.save(str(tmp_path / "vocab.json"))
    t = vocab.text_to_id
    markers, duplicate_mark = {"a": t(10), "b": t(11)}, t(12)

    def write_corpus(name, n_docs, caption_length, duplicates):
        """Captioned one-image documents; the last ``duplicates`` repeat earlier ones' hashes and carry a mark."""
        writer = TokenShardWriter(str(tmp_path / "tokens" / name), vocab_size=vocab.size, tokens_per_shard=40)
        for i in range(n_docs):
            is_duplicate = i >= n_docs - duplicates
            caption = [t(1 + (i + k) % 9) for k in range(caption_length)]
            image = [vocab.boi, vocab.code_to_id(i % 8), vocab.code_to_id(3), vocab.eoi]
            tail = [markers[name], *([duplicate_mark] if is_duplicate else [])]
            writer.add([vocab.bos, *caption, *image, *tail, vocab.eos], {"row": i},
                       content_hash=(i - (n_docs - duplicates)) + 1 if is_duplicate else i + 1)  # fmt: skip
        manifest = write_manifest(writer.folder, writer.finish(), vocab_size=vocab.size, dedup=True)
        assert manifest["duplicates"] == duplicates and len(manifest["shards"]) > 1  # duplicates across shards

    write_corpus("a", 30, 3, duplicates=4)  # many short documents
    write_corpus("b", 8, 12, duplicates=2)  # a few long ones
    weights = {"a": 0.25, "b": 0.75}
    write_mixture(str(tmp_path / "tokens"), [{"folder": name, "weight": w} for name, w in weights.items()])
    config = PackedDataLoader.Config(tokens_dir=str(tmp_path / "tokens"), pad_id=vocab.pad, seed=0,
                                     vocab_path=str(tmp_path / "vocab.json"), cm3_rate=0.5, condition_dropout=0.5)  # fmt: skip
    loader = PackedDataLoader(config, dp_world_size=1, dp_rank=0, seq_len=48, local_batch_size=4)

    tokens = {"a": 0, "b": 0}
    masked = uncaptioned = 0
    it = iter(loader)
    batches = []
    for step in range(60):
        inputs, labels = next(it)
        batches.append((inputs, labels))
        if step == 29:
            state = loader.state_dict()
        for row in range(len(labels)):
            for d in inputs["document_ids"][row].unique():
                selected = inputs["document_ids"][row] == d
                if (labels[row][selected] == -100).all():
                    continue  # padding
                ids = inputs["input"][row][selected].tolist() + [labels[row][selected][-1].item()]
                assert duplicate_mark not in ids, "a marked duplicate was trained on"
                name = "a" if markers["a"] in ids else "b"
                tokens[name] += len(ids) - 1
                masked += vocab.special("infill_0") in ids
                uncaptioned += ids[1] == vocab.boi
    share = tokens["a"] / (tokens["a"] + tokens["b"])
    assert abs(share - weights["a"]) < 0.03, share
    assert masked > 20 and uncaptioned > 20  # both transforms ran
    resumed = PackedDataLoader(config, dp_world_size=1, dp_rank=0, seq_len=48, local_batch_size=4)
    resumed.load_state_dict(state)
    for (inputs, labels), (got_inputs, got_labels) in zip(batches[30:40], iter(resumed)):
        assert torch.equal(got_inputs["input"], inputs["input"]) and torch.equal(got_labels, labels)


def test_trainer_hands_loss_weights_to_the_loss_and_adds_up_its_modality_sums():
    import contextlib

    from mmgen.nonfinite import NonFiniteGuard
    from mmgen.train.trainer import MMGenTrainer

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.logits = torch.nn.Parameter(torch.randn(1, 4, 20))

        def forward(self, inputs, **kwargs):
            assert "loss_weights" not in kwargs  # for the loss, not the model
            return self.logits

    trainer = MMGenTrainer.__new__(MMGenTrainer)  # only the forward-backward step: no mesh, no checkpoints
    trainer.model_parts, trainer.loss_fn, trainer.train_context = [Model()], make_loss(), contextlib.nullcontext
    trainer.step, trainer.step_losses, trainer.step_sums = 1, [], None
    trainer.nonfinite = NonFiniteGuard("skip")
    labels = torch.tensor([[1, 12, 2, 13]])
    weights = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    per_token = torch.nn.functional.cross_entropy(trainer.model_parts[0].logits[0], labels[0], reduction="none")
    loss = trainer._forward_backward_body(torch.zeros(1, 4, dtype=torch.long), labels, torch.tensor(2.0),
                                          {"positions": torch.arange(4)[None], "loss_weights": weights})  # fmt: skip
    assert torch.allclose(loss, per_token[2:].sum() / 2)
    trainer._forward_backward_body(torch.zeros(1, 4, dtype=torch.long), labels, torch.tensor(2.0), {})
    stepped = []
    trainer._step_if_finite(lambda: stepped.append(trainer.step))
    assert stepped == [1]  # the step's sums join the logged ones once its optimizer step is taken
    _, text_n, _, image_n = trainer.modality_sums.tolist()
    assert (text_n, image_n) == (1 + 2, 1 + 2)  # the weighted batch counts its weight-1 tokens only

    trainer.step = 2  # a step whose gradient is NaN: no optimizer step, and its sums stay out of the log
    trainer._forward_backward_body(torch.zeros(1, 4, dtype=torch.long), labels, torch.tensor(2.0), {})
    trainer.model_parts[0].logits.grad[0, 0, 0] = float("nan")
    trainer._step_if_finite(lambda: stepped.append(trainer.step))
    assert stepped == [1] and trainer.modality_sums.tolist()[1] == 3 and trainer.nonfinite.skipped == 1


def test_loader_carries_the_cm3_text_cue_to_its_transform(tmp_path):
    from mmgen.data.transforms import TrainingDocument
    from mmgen.tokenizers.vocab import Vocab
    from mmgen.train.components import PackedDataLoader, document_transforms

    vocab = Vocab.build(text_vocab_size=20, codebook_size=8, grid=(1, 2))
    vocab.save(str(tmp_path / "vocab.json"))
    config = PackedDataLoader.Config(vocab_path=str(tmp_path / "vocab.json"), cm3_rate=1.0, cm3_image_share=0.0,
                                     cm3_text_cue=2)  # fmt: skip
    (cm3,) = document_transforms(config, None, seq_len=48)
    text = [vocab.text_to_id(i) for i in range(1, 13)]
    sentinel = vocab.special("infill_0")
    for index in range(10):
        out = cm3(TrainingDocument(index, np.array([vocab.bos, *text, vocab.eos]))).tokens.tolist()
        hole, closing = out.index(sentinel), len(out) - 1 - out[::-1].index(sentinel)
        cue = out[closing + 1 : closing + 1 + min(2, hole - 1)]
        assert cue == out[hole - len(cue) : hole]  # the text before the hole, again after the closing sentinel
        assert out[closing + 1 + len(cue) : -1] == text[hole - 1 : hole - 1 + len(out) - closing - 2 - len(cue)]
