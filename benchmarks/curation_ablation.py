"""DataComp's experiment on the noisy shapes world: raw against curated training data at the same token budget,
scored on clean held-out scenes; an arm with the filter alone, to tell balancing's share; CapFilt's
recaptioning, measured; and the thresholds the training split's ground truth would choose.

    python benchmarks/curation_ablation.py --config demo --processes 1 --arms raw,filtered,curated \\
        --world.noise_misaligned 0.3 --world.noise_uninformative 0.1 --world.noise_near_duplicates 0.05 \\
        --world.concept_tail 1.0 --curate.concepts world --curate.concept_cap 600

``--arms`` (default ``raw,curated``) names the arms to train and compare, of ``raw``, ``filtered`` and ``curated``;
every other override goes to every stage. First the stages the run folder lacks are run as usual
(data/make_world.py, tokenizers/train_text.py, tokenizers/train_image.py, tokenizers/encode.py,
retrieval/train_encoder.py), so the tokenizers and the dual encoder are trained once, on the raw corpus, and
shared. Then, in ``<run>/curation_ablation/``:

- ``raw/``: pretraining on the run's token shards, the noisy corpus as it is;
- ``curated/``: the training documents and caption pairs curated by ``curate_corpus`` (data/curate.py's call;
  reports in ``curated/curate/``): the CLIP-score filter (``curate.clip_*``) on both, concept balancing
  (``curate.concepts``, ``curate.concept_cap``; ``curate.concept_balance sample`` keeps every pair and lets the
  loader draw each pass by the balancing's probabilities) on the pairs only, since a document names many concepts;
  encoded with the run's tokenizers and mixed by ``world.pretrain_caption_share`` like the raw arm; then
  pretraining with the same steps, batch and sequence length, so the same number of tokens;
- ``filtered/``: as ``curated/`` without concept balancing: the same curated documents
  (``curated/corpus/documents``) and the caption pairs after the CLIP-score filter alone, so it differs from
  the curated arm by balancing only;
- ``recaptioned/`` (with the raw arm): the caption pairs curated again with recaptioning by the raw arm's model
  (CapFilt), to measure it; no model trains on them.

The models are scored on the ``eval.split`` scenes (held-out by default; validation while choosing settings):
bits per token, caption, text-to-image and classification accuracy, each with items and a 95 % interval, overall
and on one-shape scenes of the 6 most and the 6 least common concepts of the training caption pairs (by their
scenes' ground truth). From the training split's ground truth (never the held-out one), the sweeps of
``mmgen.eval.curation_thresholds``: the document-image threshold (``curate.clip_threshold_documents``) with the
best Youden's J, and the generated-caption one (``curate.recaption_threshold``) with the best F1 of right captions.
Writes ``curation_ablation.json`` and ``curation_ablation.md`` (the tables). A finished arm (its last checkpoint,
its curated corpus, its tokens) is not redone; delete its folder to redo it.
"""

import argparse
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

from mmgen.cli import fail, run_cli, start_stage
from mmgen.config import ConfigError, ExperimentConfig, RunPaths
from mmgen.data.world_noise import concept_counts, concept_groups
from mmgen.device import generation_device
from mmgen.data.corpus import open_corpus
from mmgen.data.token_shards import TokenShards
from mmgen.eval.curation_ablation import arm_metrics, markdown_tables, recaption_figures
from mmgen.eval.curation_thresholds import document_thresholds, grid, recaption_thresholds, recaptioned_pairs
from mmgen.eval.summary import read_json
from mmgen.files import read_jsonl, write_atomic, write_json
from mmgen.model.checkpoint import checkpoint_steps, load_trained_model
from mmgen.retrieval.curate_stage import curate_corpus
from mmgen.retrieval.embedder import load_embedder
from mmgen.tokenizers.run import load_run_tokenizer

ROOT = Path(__file__).resolve().parents[1]
ARMS = ("raw", "filtered", "curated")
PREREQUISITES = (  # (stage script, the output that shows it ran)
    ("data/make_world.py", lambda p: p.caption_pairs("train")),
    ("tokenizers/train_text.py", lambda p: p.text_tokenizer),
    ("tokenizers/train_image.py", lambda p: f"{p.image_tokenizer}/model.safetensors"),
    ("tokenizers/encode.py", lambda p: f"{p.tokens('train')}/manifest.json"),
    ("retrieval/train_encoder.py", lambda p: f"{p.retrieval_encoder}/encoder.json"),
)


def run_stage(script: str, overrides: list[str], *extra: str, threads: int | None = None) -> None:
    cmd = [sys.executable, str(ROOT / script), *overrides, *extra]
    print("=== " + " ".join(cmd), flush=True)
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    status = subprocess.run(cmd, env=env).returncode
    if status:
        fail(f"{script} ended with status {status} (its error is above)")


def link(arm: Path, name: str, target: str) -> None:
    path = arm / name
    if not os.path.lexists(path):  # a link to an arm that has not trained yet dangles until it has
        path.symlink_to(Path(target).resolve())


def pretrain(cfg: ExperimentConfig, arm: Path, overrides: list[str]) -> None:
    """Pretrain into ``arm`` (one thread per rank, as the demo does), unless its last checkpoint is there."""
    if cfg.training.steps in checkpoint_steps(str(arm / "pretrain" / cfg.checkpoint.folder)):
        print(f"{arm.name}: pretrained already")
        return
    run_stage("train/pretrain.py", overrides, "--output_dir", str(arm), threads=1)


def curated_corpus(cfg: ExperimentConfig, paths: RunPaths, arm: Path, name: str, source: str, *,
                   concepts: str, recaption: bool = False) -> str:  # fmt: skip
    """``source`` curated into ``arm/corpus/name`` (report in ``arm/curate/name``) by the run's encoder; the
    decoder that recaptions is ``arm``'s."""
    out, report = arm / "corpus" / name, arm / "curate" / name
    if not (report / "curation.json").exists():  # the report is written last: with it, the corpus is whole
        c = dataclasses.replace(cfg.curate, input=source, output=str(out), encoder=paths.retrieval_encoder,
                                concepts=concepts, recaption=recaption)  # fmt: skip
        curate_corpus(dataclasses.replace(cfg, curate=c), RunPaths(str(arm)), report_dir=str(report))
    return str(out)


def corpus_size(tokens_dir: str) -> dict[str, int]:
    """Documents, caption pairs and tokens of a training split encoded from the world's two corpora (c0, c1); the
    tokens one pass draws where balancing keeps the data (sampling probabilities)."""
    docs, pairs = (TokenShards(f"{tokens_dir}/c{k}") for k in (0, 1))

    def per_pass(shards: TokenShards) -> int:
        p = shards.sampling_probabilities()
        return int(shards.lengths.sum() if p is None else (p * shards.lengths).sum())

    return {"documents": docs.manifest["documents"], "caption_pairs": pairs.manifest["documents"],
            "tokens": per_pass(docs) + per_pass(pairs)}  # fmt: skip


def evaluated(cfg: ExperimentConfig, paths: RunPaths, arm: Path, tokenizer, groups: dict[str, list[str]]) -> dict:
    """The arm's step, corpus and metrics (``arm_metrics``), kept in ``arm/ablation_metrics.json`` and reused while
    the checkpoint, the evaluation settings and the concept groups are the same."""
    model, step = load_trained_model(str(arm / "pretrain"), checkpoint_folder=cfg.checkpoint.folder,
                                     device=generation_device())  # fmt: skip
    key = {"step": step, "eval": dataclasses.asdict(cfg.eval), "groups": groups}
    saved = arm / "ablation_metrics.json"
    if saved.exists():
        kept = read_json(str(saved))
        if kept["key"] == json.loads(json.dumps(key)):
            return kept["result"]
    print(f"evaluating {arm.name} (step {step}) on {cfg.eval.split} scenes ...", flush=True)
    result = {"step": step, "corpus": corpus_size(str(arm / "tokens" / "train")),
              "metrics": arm_metrics(cfg, model, tokenizer, paths.tokens("heldout"), groups)}  # fmt: skip
    write_json(str(saved), {"key": key, "result": result})
    return result


def chosen_arms(argv: list[str]) -> tuple[list[str], list[str]]:
    """The ``--arms`` named (in ``ARMS``' order) and the rest of the command line, the stages' overrides."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--arms", default="raw,curated")
    known, rest = parser.parse_known_args(argv)
    arms = [a.strip() for a in known.arms.split(",") if a.strip()]
    unknown = sorted(set(arms) - set(ARMS))
    if unknown or not arms:
        raise ConfigError(f"--arms {known.arms!r}: name one or more of {', '.join(ARMS)} (unknown: {', '.join(unknown) or 'none'})")
    return [a for a in ARMS if a in arms], rest


def train_arm(cfg: ExperimentConfig, paths: RunPaths, arm: Path, overrides: list[str], documents: str, pairs: str) -> None:
    """Encode ``documents`` and caption ``pairs`` mixed like the raw arm, then pretrain ``arm`` on them."""
    share = cfg.world.pretrain_caption_share
    if not os.path.exists(arm / "tokens" / "train" / "manifest.json"):
        run_stage("tokenizers/encode.py", overrides, "--output_dir", str(arm), "--data.train_corpus",
                  f"{documents},{pairs}", "--data.train_weights", f"{1 - share},{share}",
                  "--data.heldout_corpus", paths.corpus_split("heldout"))  # fmt: skip
    pretrain(cfg, arm, overrides)


def threshold_sweeps(cfg: ExperimentConfig, paths: RunPaths, top: Path) -> dict:
    """The document-image and generated-caption sweeps, from the curation records and the recaptioned pairs the
    run has (the training split)."""
    sweeps = {}
    documents = top / "curated" / "curate" / "documents" / "curation.json"
    if documents.exists():
        sweeps["documents"] = document_thresholds(read_json(str(documents)), grid(0.40, 0.80))
    record = top / "recaptioned" / "curate" / "captions" / "curation.json"
    if record.exists():
        rec = read_json(str(record))
        used = next(s["settings"]["threshold"] for s in rec["steps"] if s["step"] == "recaption")
        figures = recaption_figures(rec["ground_truth"])["all"]
        options = dataclasses.replace(cfg.data, dedup_documents=False, dedup_images=False)  # every pair written
        docs = list(open_corpus(str(top / "recaptioned" / "corpus" / "captions"), "captions", options=options))
        scores, right = recaptioned_pairs(docs, load_embedder(paths.retrieval_encoder, paths))
        sweeps["recaption"] = {**recaption_thresholds(scores, right, removed=figures["removed"],
                                                      right_total=figures["recaption_correct"],
                                                      thresholds=grid(used, 0.95)), "used": used}  # fmt: skip
    return sweeps


def main() -> None:
    names, overrides = chosen_arms(sys.argv[1:])
    stage = start_stage("curation_ablation", __doc__, argv=overrides)
    cfg, paths = stage.cfg, stage.paths
    share = cfg.world.pretrain_caption_share
    if cfg.data.train_corpus or not 0 < share < 1:
        raise ConfigError("the ablation curates the run's shapes world: leave data.train_corpus empty and set "
                          "world.pretrain_caption_share between 0 and 1 (the demo's 0.5)")
    for script, output in PREREQUISITES:
        if not os.path.exists(output(paths)):
            run_stage(script, overrides)
    top = Path(cfg.run_dir) / "curation_ablation"
    arms = {name: top / name for name in names}
    recaptioned = top / "recaptioned"
    curated = top / "curated"  # the filtered arm's documents are curated there too, so it needs the tokenizers
    for arm in {*arms.values(), recaptioned, *([curated] if {"filtered", "curated"} & set(arms) else [])}:
        arm.mkdir(parents=True, exist_ok=True)
        link(arm, "tokenizers", f"{paths.root}/tokenizers")

    if "raw" in arms:
        link(arms["raw"], "tokens", f"{paths.root}/tokens")
        pretrain(cfg, arms["raw"], overrides)
    curation = {}
    if {"filtered", "curated"} & set(arms):  # both arms train on the same filtered documents, kept in curated/
        documents = curated_corpus(cfg, paths, curated, "documents", paths.corpus_split("train"), concepts="")
        curation["documents"] = curated / "curate" / "documents"
    for name, concepts in (("filtered", ""), ("curated", cfg.curate.concepts)):
        if name in arms:
            pairs = curated_corpus(cfg, paths, arms[name], "captions", paths.caption_pairs("train"), concepts=concepts)
            curation[f"{name} captions"] = arms[name] / "curate" / "captions"
            train_arm(cfg, paths, arms[name], overrides, documents, pairs)
    result: dict = {}
    if "raw" in arms:  # recaptioning uses the raw arm's model
        link(recaptioned, "pretrain", str(arms["raw"] / "pretrain"))
        recaption = curated_corpus(cfg, paths, recaptioned, "captions", paths.caption_pairs("train"), concepts="",
                                   recaption=True)  # fmt: skip
        print(f"recaptioned caption pairs: {recaption}")
        truth = read_json(str(recaptioned / "curate" / "captions" / "curation.json"))["ground_truth"]
        result["recaption"] = recaption_figures(truth)

    tokenizer = load_run_tokenizer(paths, generation_device())
    groups = concept_groups(concept_counts(record['metadata'] for record in read_jsonl(paths.caption_pairs('train'))))
    result = {"split": cfg.eval.split, "groups": groups,
              "arms": {name: evaluated(cfg, paths, arm, tokenizer, groups) for name, arm in arms.items()}, **result,
              "thresholds": threshold_sweeps(cfg, paths, top),
              "training_tokens_each": cfg.training.steps * cfg.training.local_batch_size * cfg.training.seq_len
              * cfg.processes, "curate": dataclasses.asdict(cfg.curate),
              "curation": {name: read_json(str(folder / "curation.json"))["steps"] for name, folder in curation.items()}}  # fmt: skip
    tables = markdown_tables(result)
    write_json(str(top / "curation_ablation.json"), result)
    write_atomic(str(top / "curation_ablation.md"), tables)
    print(tables)
    print(f"wrote {top / 'curation_ablation.json'} and {top / 'curation_ablation.md'}")
    stage.record_timing()


if __name__ == "__main__":
    run_cli(main)
