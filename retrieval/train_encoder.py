"""Train the retrieval dual encoder on image–caption pairs and report its recall.

    python retrieval/train_encoder.py --config demo

Reads the run's caption pairs (train and held-out), tokenizes them with the
trained tokenizers, trains the encoder with the sigmoid loss, and prints
recall@1/5 in both directions on held-out pairs next to random and
bag-of-words baselines. Writes ``<run>/retrieval/encoder/``.
"""

import numpy as np
import torch

from mmgen.cli import run_cli, start_stage
from mmgen.files import write_json
from mmgen.retrieval.encoder import EncoderShape
from mmgen.retrieval.pairs import tokenized_caption_pairs
from mmgen.retrieval.training import bag_of_words_similarity, encoder_similarity, retrieval_report, train_dual_encoder
from mmgen.tokenizers.image import ImageTokenizer
from mmgen.tokenizers.text import TextTokenizer


def main() -> None:
    stage = start_stage("train_encoder", __doc__)
    paths, r = stage.paths, stage.cfg.retrieval
    text = TextTokenizer.load(paths.text_tokenizer)
    image = ImageTokenizer.load(paths.image_tokenizer)
    with torch.inference_mode():
        train_codes, train_texts, _ = tokenized_caption_pairs(paths.caption_pairs("train"), text, image)
        test_codes, test_texts, test_captions = tokenized_caption_pairs(paths.caption_pairs("heldout"), text, image)
    shape = EncoderShape(
        text_vocab_size=text.vocab_size, codebook_size=image.codebook_size, grid=tuple(image.grid),
        width=r.encoder_width, layers=r.encoder_layers, embed_dim=r.embed_dim,
    )
    encoder = train_dual_encoder(train_codes, train_texts, shape, r)
    encoder.save(paths.retrieval_encoder)
    # pairs with the same caption are interchangeable answers
    groups = np.unique(np.array(test_captions), return_inverse=True)[1]
    report = retrieval_report(
        {
            "dual_encoder": encoder_similarity(encoder, test_codes, test_texts),
            "bag_of_words": bag_of_words_similarity(
                train_codes, train_texts, test_codes, test_texts, codebook_size=image.codebook_size, text_vocab_size=text.vocab_size
            ),
            "random": np.random.default_rng(0).random((len(test_codes), len(test_codes))),
        },
        groups,
    )
    for name, figures in report.items():
        print(f"{name:>13}: " + "  ".join(f"{k} {v:.3f}" for k, v in figures.items()))
    result = {"train_pairs": len(train_codes), "heldout_pairs": len(test_codes), "recall": report}
    write_json(paths.retrieval_encoder_metrics, {"seconds": stage.seconds, **result})
    stage.record_timing(**result)


if __name__ == "__main__":
    run_cli(main)
