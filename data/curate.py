"""Curate a corpus: filters and dedup, CLIP-score filtering, recaptioning, concept and image-cluster balancing.

    python data/curate.py --config demo        # the run's shapes-world training caption pairs -> <run>/curated
    python data/curate.py --config demo --curate.input /data/mmc4/ --curate.output /data/mmc4-curated \\
        --curate.clip_filter top_fraction --curate.clip_keep_fraction 0.3 --curate.concepts concepts.txt

Reads any corpus mmgen reads (kind from data.corpus_kind, under the data.* filters and dedup), runs the
curate.* steps (mmgen/retrieval/corpus_curation.py) and writes the kept documents in the input's format to
curate.output, a folder written under a temporary name and renamed; the report goes to <run>/curate/
(report.html, curation.json, the plots). Steps that embed use the run's dual encoder
(retrieval/train_encoder.py first; curate.encoder names another, or a local CLIP folder) and tokenizers;
recaptioning uses the run's pretrained decoder.
"""

from mmgen.cli import run_cli, start_stage
from mmgen.data.concepts import read_concepts
from mmgen.data.corpus import detect_kind, open_corpus
from mmgen.data.corpus_writer import write_corpus
from mmgen.data.reading import CorpusError
from mmgen.model.checkpoint import load_pretrained_model
from mmgen.progress import progress_bar
from mmgen.retrieval.corpus_curation import Pipeline, decoder_captioner
from mmgen.retrieval.curation_report import write_curation_report
from mmgen.retrieval.embedder import load_embedder
from mmgen.tokenizers.run import load_run_tokenizer


def main() -> None:
    stage = start_stage("curate", __doc__)
    cfg, paths, c = stage.cfg, stage.paths, stage.cfg.curate
    url = c.input or paths.caption_pairs("train")
    kind = detect_kind(url) if cfg.data.corpus_kind == "auto" else cfg.data.corpus_kind
    corpus = open_corpus(url, kind, options=cfg.data)  # image_size 0: images are written back as they came
    concepts = read_concepts(c.concepts) if c.concepts else None
    # what the chosen steps need is loaded before the corpus is read, so a missing input fails at once
    embed_steps = c.clip_filter != "off" or c.near_duplicate_similarity > 0 or c.clusters > 0
    embedder = load_embedder(c.encoder or paths.retrieval_encoder, paths) if embed_steps else None
    captioner = None
    if c.recaption and c.clip_filter != "off":
        model, _ = load_pretrained_model(cfg, paths)
        e = cfg.eval
        captioner = decoder_captioner(model, load_run_tokenizer(paths), prompt=e.caption_prompt, lead=e.caption_lead,
                                      max_tokens=e.caption_max_tokens, seed=c.seed)  # fmt: skip
    docs = list(progress_bar(corpus, desc="reading", unit="document"))
    if not docs:
        raise CorpusError(f"{url}: no document to curate ({corpus.stats.summary()})")
    pipeline = Pipeline(c, kind, embedder=lambda: embedder or load_embedder(c.encoder or paths.retrieval_encoder, paths),
                        captioner=lambda: captioner, concepts=concepts)  # fmt: skip
    pipeline.record.read = corpus.stats.to_dict()
    kept = pipeline.run(docs)
    out_dir = c.output or paths.curated_corpus
    written = write_corpus(kept, kind, out_dir)
    summary = {"input": url, "kind": kind, "documents read": len(docs), "documents written": written, "output": out_dir}
    files = write_curation_report(pipeline.record, paths.curation_dir, title="Curation report", summary=summary)
    print(f"reading: {corpus.stats.summary()}")
    for step in pipeline.record.steps:
        removed = ", ".join(f"{r} {n}" for r, n in sorted((step.removed + step.images_removed).items())) or "nothing removed"
        print(f"{step.name}: {step.documents_in} -> {step.documents_out} documents ({removed}{f', made {step.added}' if step.added else ''})")
    for kind_, truth in pipeline.record.ground_truth.items():
        if truth.get("scored"):
            print(f"ground truth {kind_}: CLIP filter kept {truth.get('kept_by_clip', 0)} of {truth['scored']}")
    print(f"wrote {written} documents to {out_dir}; report {files['report.html']}")
    stage.record_timing(documents_read=len(docs), documents_written=written, ground_truth=pipeline.record.ground_truth)


if __name__ == "__main__":
    run_cli(main)
