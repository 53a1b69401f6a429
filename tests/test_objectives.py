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


def test_text_cue_repeats_the_text_before_the_hole_after_the_closing_sentinel():
    from mmgen.data.objectives import cue_length

    ids = document()  # BOS t1 t2 t3 | BOI c4 c5 EOI | t6 t7 EOS
    s = V.special("infill_0")
    assert cue_length(ids, (2, 4), V, 4) == 1  # the cue stops at BOS
    assert cue_length(ids, (9, 10), V, 4) == 1  # and at the image's EOI
    assert cue_length(ids, (3, 4), V, 1) == 1 and cue_length(ids, (3, 4), V, 0) == 0
    assert cue_length(ids, (4, 8), V, 4) == 0  # an image span has no cue
    out = cm3_transform(ids, (3, 4), sentinel=s, eos=V.eos, cue=2)
    assert out.tolist() == [V.bos, *ids[1:3], s, *ids[4:10], s, *ids[1:3], ids[3], V.eos]


def test_cm3_masking_with_a_text_cue_cues_text_spans_only():
    sentinel = V.special("infill_0")
    plain = [CM3Masking(V, rate=1.0, image_share=0.5, seed=0)(TrainingDocument(i, document())).tokens for i in range(40)]
    cued = [CM3Masking(V, rate=1.0, image_share=0.5, seed=0, text_cue=3)(TrainingDocument(i, document())).tokens
            for i in range(40)]
    kinds, cued_spans = set(), 0
    for p, c in zip(plain, cued):
        after = p.tolist().index(sentinel, p.tolist().index(sentinel) + 1) + 1  # where the moved span starts
        span = p[after:-1]
        is_image = int(span[0]) == V.boi
        kinds.add(is_image)
        if is_image:
            assert c.tolist() == p.tolist()
        else:  # the same span, after the text tokens that preceded the hole
            hole = p.tolist().index(sentinel)
            cue = c[after : len(c) - 1 - len(span)]
            assert c[: after].tolist() == p[: after].tolist() and c[-1 - len(span) : -1].tolist() == span.tolist()
            text_before = next(k for k in range(hole + 1) if k == hole or not V.is_text(int(p[hole - 1 - k])))
            assert len(cue) == min(3, text_before) and cue.tolist() == p[hole - len(cue) : hole].tolist()
            cued_spans += len(cue) > 0
    assert kinds == {True, False} and cued_spans > 0


def test_infill_prompt_is_the_training_form_up_to_the_moved_span():
    from mmgen.data.objectives import cue_length
    from mmgen.generation.infill import infill_prompt

    ids = document()
    s = V.special("infill_0")
    for span in [(2, 4), (8, 10), (4, 8)]:
        for text_cue in (0, 2):
            cue = cue_length(ids, span, V, text_cue)
            trained = cm3_transform(ids, span, sentinel=s, eos=V.eos, cue=cue).tolist()
            prompt = infill_prompt(ids, span, V, text_cue)
            assert trained == prompt + ids[span[0] : span[1]].tolist() + [V.eos]
