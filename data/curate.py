"""Curate a corpus: filters and dedup, CLIP-score filtering, recaptioning, concept and image-cluster balancing.

    python data/curate.py --config demo        # the run's shapes-world training caption pairs -> <run>/curated
    python data/curate.py --config demo --curate.input /data/mmc4/ --curate.output /data/mmc4-curated \\
        --curate.clip_filter top_fraction --curate.clip_keep_fraction 0.3 --curate.concepts concepts.txt

Reads any corpus mmgen reads (kind from data.corpus_kind, under the data.* filters and dedup), runs the
curate.* steps (mmgen/retrieval/corpus_curation.py) and writes the kept documents in the input's format to
curate.output, a folder written under a temporary name and renamed; the report goes to <run>/curate/
(report.html, curation.json, the plots). Steps that embed use the run's dual encoder
(retrieval/train_encoder.py first; curate.encoder names another, or a local CLIP folder) and tokenizers;
recaptioning uses the run's pretrained decoder. The CLIP-score filter has a threshold per corpus kind:
curate.clip_threshold for caption pairs and ImageFolder, curate.clip_threshold_documents for interleaved
documents (OBELICS, MMC4), and curate.recaption_threshold for the decoder's own captions.
"""

from mmgen.cli import run_cli, start_stage
from mmgen.retrieval.curate_stage import curate_corpus


def main() -> None:
    stage = start_stage("curate", __doc__)
    record, summary = curate_corpus(stage.cfg, stage.paths)
    stage.record_timing(**summary, ground_truth=record.ground_truth)


if __name__ == "__main__":
    run_cli(main)
