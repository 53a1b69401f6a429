"""The evaluation report of a run: ``<run>/eval/metrics.json`` and ``<run>/eval/report.html``.

Measures, on held-out data only: bits per token per modality (held-out token
shards; with ``eval.split validation`` every figure, these included, is read
on the world's validation split instead), caption accuracy, text-to-image
accuracy (through the scene analyser, itself checked on exact renders and on
VQ round trips in the same run), generative classification of shape and colour
in both directions, CM3 infilling of images and text spans when pretraining
used the CM3 form (``data.cm3_rate``), the image tokenizer's PSNR (read from
its metrics file), and, in a world with named entities, knowledge of them
(``knowledge.py``: head and tail, with and without retrieval, the retriever's
recall of their definitions). Every accuracy comes with its chance level
measured on the same predictions. Both files are written under a temporary
name and renamed, so a reader never sees half a report.
"""

from __future__ import annotations

import json
import posixpath
import time
from typing import Any, Callable

import torch

from mmgen.config import ExperimentConfig, RunPaths
from mmgen.data.token_shards import TokenShards
from mmgen.device import machine_description
from mmgen import pages as H
from mmgen.eval.classify import confusion_png
from mmgen.eval.curve import curve_png, learning_curve, write_tensorboard
from mmgen.eval.infill_eval import infill_eval
from mmgen.data.entities import has_entities
from mmgen.eval.knowledge import evaluate_knowledge, load_knowledge_retriever
from mmgen.eval.likelihood import bits_per_token
from mmgen.eval.shapes_eval import shapes_accuracies, split_documents, world_documents
from mmgen.eval.summary import read_json
from mmgen.files import exists, write_atomic
from mmgen.progress import print_above


def evaluate(cfg: ExperimentConfig, paths: RunPaths, model, tokenizer, step: int,
             log: Callable[[str], None] = print_above) -> tuple[dict, str]:
    """Run every measurement; returns (metrics, report HTML)."""
    e, world = cfg.eval, cfg.world
    timings: dict[str, float] = {}
    metrics: dict[str, Any] = {"step": step, "split": e.split, "machine": machine_description()}

    def timed(name: str, fn):
        start = time.time()
        log(f"[report] {name} ...")
        result = fn()
        timings[name] = round(time.time() - start, 2)
        log(f"[report] {name} done in {timings[name]:.1f}s")
        return result

    documents = split_documents(paths, tokenizer, world, e.split, e.heldout_documents)
    bits = timed("bits per token", lambda: bits_per_token(
        model, documents, image_range=tokenizer.vocab.image_range,
        pad_id=tokenizer.vocab.pad, max_len=cfg.model.max_seq_len, batch_size=e.batch_size))
    metrics.update(bits)

    accuracies, shown = shapes_accuracies(model, tokenizer, e, world, timed=timed)
    metrics.update(accuracies)
    caption, t2i, classes = shown["caption"], shown["t2i"], shown["classes"]
    infills = None
    if cfg.data.cm3_rate > 0 and e.infill_documents > 0:
        # while settings are chosen (split 'validation'), documents of the world's validation split, not held-out
        # ones; held-out: every shard, since documents without a span are passed over
        documents = (TokenShards(paths.tokens("heldout")) if e.split == "heldout"
                     else world_documents(tokenizer, world, e.infill_documents, e.split))
        infills = timed("infilling", lambda: infill_eval(
            model, tokenizer, documents, documents=e.infill_documents, seed=e.seed, temperature=e.infill_temperature,
            cfg_scale=e.infill_cfg_scale, batch_size=e.batch_size, text_cue=cfg.data.cm3_text_cue))
        metrics.update({f"infill_{k}": v for k, v in infills.items()
                        if (isinstance(v, (float, int)) and not isinstance(v, bool)) or k.endswith("_ci95")})
    knowledge = None
    if has_entities(paths):
        retriever = load_knowledge_retriever(cfg, paths, next(model.parameters()).device)
        if retriever is None:
            log("[report] no retrieval encoder and bank: knowledge is measured without retrieval only")
        knowledge = timed("knowledge", lambda: evaluate_knowledge(cfg, paths, model, tokenizer, retriever=retriever,
                                                                  log=log))  # fmt: skip
        metrics.update(knowledge["metrics"])
    metrics["vq_psnr"] = read_json(paths.image_tokenizer_metrics)["psnr"]
    curve = timed("learning curve", lambda: learning_curve(cfg, paths, tokenizer, next(model.parameters()).device,
                                                           log=log))
    if curve:
        metrics["curve"] = curve
        write_tensorboard(curve, paths.for_split(posixpath.join(paths.pretrain_dir, cfg.metrics.save_tb_folder, "eval"),
                                                  cfg.eval.split))
    metrics["seconds"] = timings
    return metrics, _html(cfg, metrics, caption, t2i, classes, paths, infills, knowledge)


_ACCURACIES = (
    ("caption_accuracy", "share of true attributes a generated caption states"),
    ("t2i_accuracy", "share of prompt attributes the analyser reads in the generated image"),
    ("classify_shape_accuracy_image_given_label", "shape by log p(image | label prompt)"),
    ("classify_color_accuracy_image_given_label", "colour by log p(image | label prompt)"),
    ("classify_shape_accuracy_label_given_image", "shape by log p(label text | image)"),
    ("classify_color_accuracy_label_given_image", "colour by log p(label text | image)"),
)


def interval_text(metrics: dict, key: str) -> str:
    """'0.812 [0.79, 0.83], n = 300' for a metric stored with ``with_interval``."""
    lo, hi = metrics.get(f"{key}_ci95", (float("nan"), float("nan")))
    return f"{metrics[key]:.3f} [{lo:.3f}, {hi:.3f}], n = {metrics.get(f'{key}_items', '?')}"


def value_text(metrics: dict, key: str) -> str:
    """A metric as ``interval_text`` shows it when it has an interval, else its value alone."""
    return interval_text(metrics, key) if f"{key}_ci95" in metrics else f"{metrics.get(key, float('nan')):.3f}"


def _sft_table(paths: RunPaths, split: str) -> str:
    """Pretrained and fine-tuned checkpoints side by side on the SFT prompts of the report's split, from
    eval/compare_sft.py's output when it exists."""
    path = paths.for_split(paths.sft_metrics, split)
    if not exists(path):
        return ""
    runs = read_json(path)
    # every run's figures; a fine-tuned run's gains over the pretrained one are its own
    keys = list(dict.fromkeys(k for r in runs.values() for k, v in r.items() if isinstance(v, float)))
    head = "".join(f"<th>{H.escape(name)} (step {r['step']})</th>" for name, r in runs.items())
    rows = "".join(f"<tr><td>{H.escape(k)}</td>" + "".join(f"<td>{value_text(r, k) if k in r else '—'}</td>"
                                                           for r in runs.values())
                   + "</tr>" for k in keys)
    final = [name for name in runs if name != "pretrained"][:1]
    named = f" The final model is <b>{H.escape(final[0])}</b>." if final else ""
    prompts = "held-out" if split == "heldout" else split
    return (f"<h2>Fine-tuning ({prompts} SFT prompts)</h2><p>Value [95 % interval], items; "
            f"<code>*_gain</code>: a fine-tuned model's lead over the pretrained one on the same prompts, with a paired "
            f"interval.{named}</p>"
            f"<table><tr><th>metric</th>{head}</tr>{rows}</table>")


def _infill_section(infills: dict) -> str:
    """CM3 infilling: figures, then infilled images beside the originals and infilled text spans beside the truth."""
    rows = "".join(f"<tr><td>{H.escape(k)}</td><td>{value_text(infills, k)}</td></tr>"
                   for k, v in infills.items() if isinstance(v, float))
    body = ["<h2>Infilling (CM3)</h2><p>Each evaluation document loses one image or one text span, and the model "
            "fills the hole from both sides. Text is compared with the same model continuing the left context alone, "
            "like with like: the continuation cannot know where the span ends, so both are read at the span's true "
            "length (<code>text_exact</code> against <code>text_exact_left_context</code>); "
            "<code>text_exact_gain</code> is the infill's lead over the baseline on the same spans, with a paired "
            "interval; "
            "<code>text_exact_own_end</code> also asks the infill to end the span itself. "
            "<code>text_span_bits</code> scores the true span from both sides, <code>text_span_bits_left_context</code> "
            "from the left alone: a model that has learnt to infill needs fewer bits with more context.</p>",
            f"<table>{rows}</table><div class='grid'>"]
    for item in infills.get("image_examples", []):
        body.append(f"<div class='card'>{H.img_tag(item['infilled'])} {H.img_tag(item['original'], width=40)}<br>"
                    f"{H.escape(item['context'])}</div>")
    body.append("</div><table><tr><th>document with hole</th><th>truth</th><th>infilled (true length)</th>"
                "<th>left context only (true length)</th><th>infilled, ended by the model</th></tr>")
    columns = ("context", "truth", "infilled", "left_context", "infilled_own_end")
    for item in infills.get("text_examples", []):
        body.append("<tr>" + "".join(f"<td>{H.escape(item[k])}</td>" for k in columns) + "</tr>")
    body.append("</table>")
    return "".join(body)


def _knowledge_section(metrics: dict, knowledge: dict) -> str:
    """Head and tail entities, with and without retrieval; the retriever's recall; a few generated images."""
    modes = list(knowledge["runs"])
    head = "".join(f"<th>{H.escape(m)}</th>" for m in modes)
    rows = []
    for name in ("t2i_accuracy", "caption_accuracy", "text_bits_per_token", "image_bits_per_token"):
        for group in ("head", "tail", "replaced", "added", "entity_free"):
            keys = [f"knowledge_{m}_{name}_{group}" for m in modes]
            if not any(k in metrics for k in keys):
                continue
            cells = "".join(f"<td>{value_text(metrics, k)}</td>" if k in metrics else "<td>-</td>" for k in keys)
            rows.append(f"<tr><td>{name} ({group})</td>{cells}</tr>")
    recall = "".join(f"<tr><td>{H.escape(n)}</td><td>{interval_text(metrics, f'knowledge_{n}_recall@1')}</td>"
                     f"<td>{interval_text(metrics, f'knowledge_{n}_recall@5')}</td></tr>" for n in knowledge["recall"])
    body = [f"<h2>Knowledge of named entities</h2><p>{metrics['entities']} entities, {metrics['entities_head']} in the "
            "head (the most used, half of the training uses). Text-to-image: the image shows exactly the named "
            "entity's shapes; captioning: the caption names the right entity. Value [95 % interval], items.</p>",
            f"<table><tr><th>metric</th>{head}</tr>{''.join(rows)}</table>"]
    if recall:
        body.append("<p>Recall of the entity's defining document in the memory bank, for the text-to-image prompts:</p>"
                    f"<table><tr><th>retriever</th><th>recall@1</th><th>recall@5</th></tr>{recall}</table>")
    body.append("<div class='grid'>")
    for mode in modes:
        for group, results in knowledge["runs"][mode]["t2i"].items():
            for item in results["examples"][:4]:
                drawn = H.img_tag(item["image"]) if item["image"] is not None else "(no image drawn)"
                written = f" <i>{H.escape(item['written'])}</i>" if item.get("written") else ""
                body.append(f"<div class='card'>{drawn}<br><b>{H.escape(mode)}, {group}:</b> "
                            f"{H.escape(item['prompt'])}{written} ({'right' if item['right'] else 'wrong'})</div>")
    body.append("</div>")
    return "".join(body)


def _html(cfg, metrics, caption, t2i, classes, paths: RunPaths | None = None, infills: dict | None = None,
          knowledge: dict | None = None) -> str:
    rows = "".join(
        f"<tr><td>{key}</td><td>{interval_text(metrics, key)}</td><td>{metrics[key + '_chance']:.3f}</td>"
        f"<td>{H.escape(what)}</td></tr>" for key, what in _ACCURACIES)
    other = "".join(f"<tr><td>{key}</td><td>{metrics[key]:.3f}</td></tr>" for key in (
        "text_bits_per_token", "image_bits_per_token", "vq_psnr", "analyser_accuracy_renders", "analyser_accuracy_vq"))
    body = [f"<p>Run <code>{H.escape(cfg.run_dir)}</code>, checkpoint step {metrics['step']}.</p>",
            f"<h2>Accuracies ({H.escape(metrics['split'])} scenes)</h2><table><tr><th>metric</th>"
            "<th>value [95 % interval], items</th><th>chance (same run)</th><th>what</th></tr>",
            rows, "</table><h2>Other measures</h2><table>", other, "</table>",
            _sft_table(paths, metrics["split"]) if paths else ""]
    if metrics.get("curve"):
        png = curve_png(metrics["curve"], f"{cfg.eval.curve_items} {metrics['split']} scenes per checkpoint")
        body.append(f"<h2>Learning curve</h2><img src='{H.png_data_uri(png)}'>")
    body.append("<h2>Text to image</h2><div class='grid'>")
    for item in t2i["items"]:
        body.append(f"<div class='card'>{H.img_tag(item['image'])} {H.img_tag(item['truth_image'], width=40)}<br>"
                    f"<b>prompt:</b> {H.escape(item['prompt'])}<br><b>read:</b> {H.escape(item['read'])}</div>")
    body.append("</div><h2>Captions</h2><div class='grid'>")
    for item in caption["items"]:
        body.append(f"<div class='card'>{H.img_tag(item['image'])}<br><b>generated:</b> {H.escape(item['caption'])}"
                    f"<br><b>truth:</b> {H.escape(item['truth'])}</div>")
    body.append("</div><h2>Generative classification</h2><div class='grid'>")
    for name, task in classes.items():
        png = confusion_png(task["confusion"], task["labels"])
        body.append(f"<div><b>{H.escape(name)}</b>: top-1 {task['top1']:.3f} (chance {task['chance']:.3f}), "
                    f"top-5 {task['top5']:.3f}<br><img src='{H.png_data_uri(png)}'></div>")
    body.append("</div>")
    if infills:
        body.append(_infill_section(infills))
    if knowledge:
        body.append(_knowledge_section(metrics, knowledge))
    return H.page(f"mmgen evaluation: {cfg.name}", "\n".join(body))


@torch.inference_mode()
def write_report(cfg: ExperimentConfig, paths: RunPaths, model, tokenizer, step: int,
                 log: Callable[[str], None] = print_above) -> dict:
    metrics, page = evaluate(cfg, paths, model, tokenizer, step, log)
    write_atomic(paths.for_split(paths.report_page, cfg.eval.split), page)
    write_atomic(paths.for_split(paths.report_metrics, cfg.eval.split), json.dumps(metrics, indent=2))
    return metrics
