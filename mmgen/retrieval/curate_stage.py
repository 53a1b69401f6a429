"""``data/curate.py``'s one library call: read a corpus, run the configured curation, write corpus and report."""

from __future__ import annotations

import os
import posixpath
from typing import Any, Callable

from mmgen.config import ConfigError, ExperimentConfig, RunPaths
from mmgen.data.concepts import read_concepts
from mmgen.data.corpus import detect_kind, open_corpus
from mmgen.data.corpus_writer import write_corpus
from mmgen.data.reading import SAMPLING_KEY, CorpusError
from mmgen.files import exists
from mmgen.model.checkpoint import MODEL_FILE, load_pretrained_model, load_trained_model
from mmgen.progress import progress_bar
from mmgen.retrieval.corpus_curation import CurationRecord, Pipeline, decoder_captioner
from mmgen.retrieval.curation_report import write_curation_report
from mmgen.retrieval.embedder import load_embedder
from mmgen.tokenizers.run import load_run_tokenizer


def curate_corpus(cfg: ExperimentConfig, paths: RunPaths, *, log: Callable[[str], None] = print,
                  report_dir: str | None = None) -> tuple[CurationRecord, dict[str, Any]]:  # fmt: skip
    """Curate ``curate.input`` (default: the run's training caption pairs) into ``curate.output`` (default
    ``<run>/curated``) and write the report to ``report_dir`` (default ``<run>/curate/``; a run that curates
    several corpora gives each its own); returns the record and the summary."""
    c = cfg.curate
    url = c.input or paths.caption_pairs("train")
    kind = detect_kind(url) if cfg.data.corpus_kind == "auto" else cfg.data.corpus_kind
    out_dir = c.output or paths.curated_corpus
    if _inside(url, out_dir):
        raise ConfigError(f"curate.output {out_dir} holds the input {url}: writing it would replace the input")
    if c.concepts and c.concept_balance == "sample" and kind == "imagefolder":
        raise ConfigError("curate.concept_balance 'sample' writes a sampling probability per document, which an "
                          "ImageFolder has no place for: write the corpus as caption pairs or use 'drop'")
    corpus = open_corpus(url, kind, options=cfg.data)  # image_size 0: images are written back as they came
    concepts = read_concepts(c.concepts) if c.concepts else None
    # what the chosen steps need is loaded before the corpus is read, so a missing input fails at once
    encoder = c.encoder or paths.retrieval_encoder
    needs_embedder = c.clip_filter != "off" or c.near_duplicate_similarity > 0 or c.clusters > 0
    embedder = load_embedder(encoder, paths) if needs_embedder else None
    captioner = None
    if c.recaption and c.clip_filter != "off":
        if c.captioner:
            folder = paths.sft_dir(c.captioner)
            if not exists(posixpath.join(folder, MODEL_FILE)):
                raise ConfigError(f"curate.captioner {c.captioner!r}: no fine-tuning run at {folder} "
                                  "(run train/sft.py first)")
            model, _ = load_trained_model(folder)
        else:
            model, _ = load_pretrained_model(cfg, paths)
        e = cfg.eval
        captioner = decoder_captioner(model, load_run_tokenizer(paths), prompt=e.caption_prompt, lead=e.caption_lead,
                                      max_tokens=e.caption_max_tokens, seed=c.seed,
                                      fine_tuned=bool(c.captioner))  # fmt: skip
    docs = list(progress_bar(corpus, desc="reading", unit="document"))
    if not docs:
        raise CorpusError(f"{url}: no document to curate ({corpus.stats.summary()})")
    pipeline = Pipeline(c, kind, embedder=lambda: embedder or load_embedder(encoder, paths), captioner=lambda: captioner,
                        concepts=concepts)  # fmt: skip
    pipeline.record.read = corpus.stats.to_dict()
    kept = pipeline.run(docs)
    written = write_corpus(kept, kind, out_dir)
    summary = {"input": url, "kind": kind, "documents read": len(docs), "documents written": written, "output": out_dir}
    files = write_curation_report(pipeline.record, report_dir or paths.curation_dir, title="Curation report", summary=summary)
    log(f"reading: {corpus.stats.summary()}")
    for step in pipeline.record.steps:
        removed = ", ".join(f"{r} {n}" for r, n in sorted((step.removed + step.images_removed).items())) or "nothing removed"
        made = f", made {step.added}" if step.added else f", rewrote {step.changed}" if step.changed else ""
        log(f"{step.name}: {step.documents_in} -> {step.documents_out} documents ({removed}{made})")
    if pipeline.record.concepts.get("per_pass"):
        sampled = sum(SAMPLING_KEY in d.metadata for d in kept)  # the concept step writes it only below 1
        log(f"concepts: {sampled} documents drawn with a probability below 1 per pass, "
            f"{sum(d.metadata.get(SAMPLING_KEY, 1) for d in kept):.0f} of {written} expected per pass")
    for noise, truth in pipeline.record.ground_truth.items():
        if truth.get("scored"):
            recaptioned = (f"; of those it removed, {truth.get('recaptioned', 0)} recaptioned, "
                           f"{truth.get('recaptioned_correct', 0)} of them right" if c.recaption else "")  # fmt: skip
            log(f"ground truth '{noise}': the CLIP filter kept {truth.get('kept_by_clip', 0)} of {truth['scored']}{recaptioned}")
    log(f"wrote {written} documents to {out_dir}; report {files['report.html']}")
    return pipeline.record, summary


def _inside(path: str, folder: str) -> bool:
    """Whether ``path`` (a local path; URLs by their text) is ``folder`` or lies under it."""
    if "://" in path or "://" in folder:
        return path.rstrip("/") == folder.rstrip("/") or path.startswith(folder.rstrip("/") + "/")
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip("/") + "/")
