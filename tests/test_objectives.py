import numpy as np

from mmgen.data.objectives import CM3Masking, choose_span, cm3_transform, image_spans, text_spans
from mmgen.data.transforms import TrainingDocument
from mmgen.tokenizers.vocab import Vocab

V = Vocab.build(text_vocab_size=20, codebook_size=8, grid=(1, 2))


def document():
    t = lambda *xs: [V.text_to_id(x) for x in xs]  # noqa: E731
    c = lambda *xs: [V.code_to_id(x) for x in xs]  # noqa: E731
    return np.array([V.bos, *t(1, 2, 3), V.boi, *c(4, 5), V.eoi, *t(6, 7), V.eos])


def test_spans_find_images_and_text_runs():
    ids = document()
    assert image_spans(ids, V.boi, V.eoi) == [(4, 8)]
    assert text_spans(ids, V.text_range) == [(1, 4), (8, 10)]


def test_transform_moves_the_span_behind_a_sentinel_and_keeps_every_token():
    ids = document()
    s = V.special("infill_0")
    out = cm3_transform(ids, (4, 8), sentinel=s, eos=V.eos)
    assert out.tolist() == [V.bos, *ids[1:4], s, *ids[8:10], s, *ids[4:8], V.eos]
    assert sorted(out[out != s].tolist()) == sorted(ids.tolist())


def test_cm3_masking_is_deterministic_per_document_and_respects_the_rate():
    def masked(rate, i):
        return CM3Masking(V, rate=rate, image_share=0.5, seed=0)(TrainingDocument(i, document())).tokens

    sentinel = V.special("infill_0")
    assert 60 < sum(sentinel in masked(0.5, i) for i in range(200)) < 140
    assert [masked(0.5, i).tolist() for i in range(5)] == [masked(0.5, i).tolist() for i in range(5)]
    assert not any(sentinel in masked(0.0, i) for i in range(20))


def test_choose_span_prefers_images_when_asked():
    rng = np.random.default_rng(0)
    assert choose_span(document(), V, rng, image_share=1.0) == (4, 8)
    start, stop = choose_span(document(), V, rng, image_share=0.0)
    assert all(V.is_text(int(i)) for i in document()[start:stop])


def test_condition_dropout_removes_the_caption_before_an_image():
    from mmgen.data.objectives import drop_condition

    ids = document()
    out = drop_condition(ids, V, np.random.default_rng(0))
    assert out.tolist() == [V.bos, *ids[4:]]
    no_caption = np.array([V.bos, V.boi, V.code_to_id(1), V.code_to_id(2), V.eoi, V.eos])
    assert drop_condition(no_caption, V, np.random.default_rng(0)).tolist() == no_caption.tolist()
