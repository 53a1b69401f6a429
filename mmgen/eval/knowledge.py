"""Knowledge in the shapes world: does the model know what a named entity looks like?

Measured on the held-out (or validation) items of ``corpus/entities.json`` (mmgen/data/entities.py), for
head and tail entities separately (by their uses in training), each accuracy a share of yes/no items with
its 95 % Wilson interval:

- text-to-image: the prompt names an entity at a place ("Draw a Zorbel at the top, on a white
  background."); an image is right when the scene analyser reads exactly the entity's shapes in its layout
  (anywhere, nothing else drawn), so clutter cannot buy a match;
- captioning: the entity's image, captioned greedily; right when the first entity name the caption states
  is the entity's;
- held-out bits per token of the main documents that mention an entity (head or tail) and of entity-free ones.

With a ``Retriever`` every prompt and document is preceded by what the memory bank returns for it, in the
training layout (``prompt_with_context``), which is how a retrieval-augmented model is meant to be used;
without, the model has only its weights.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from mmgen.config import ExperimentConfig, RunPaths
from mmgen.config.schema import EvalConfig, RetrievalConfig
from mmgen.data.entities import anchors, entity_cells, read_entities, scene_entities
from mmgen.data.token_shards import TokenShards
from mmgen.data.shapes_world import render_scene
from mmgen.eval.intervals import wilson_interval, with_interval
from mmgen.eval.scene_analyser import analyse_scene
from mmgen.eval.shapes_eval import sampled_images
from mmgen.generation.captioning import sampled_captions, sampled_text
from mmgen.generation.sampler import SamplingParams, sample
from mmgen.progress import print_above, progress_bar, sampler_progress
from mmgen.retrieval.augment import retrieved_prefix
from mmgen.retrieval.bank_documents import bank_documents
from mmgen.retrieval.evaluation import defining_document_recall, defining_documents, main_document_bits
from mmgen.retrieval.neighbours import load_neighbours
from mmgen.retrieval.query import load_retriever, prompt_with_context, retrieve_for_prompt
from mmgen.tokenizers.run import load_text_tokenizer

GROUPS = ("head", "tail")


def shape_facts(shapes: Sequence[dict]) -> list[tuple[str, str, str, str]]:
    """(shape, colour, size, cell) of each shape, sorted: two scenes with equal facts show the same shapes."""
    return sorted((s["shape"], s["color"], s["size"], s["position"]) for s in shapes)


def entity_shown(read: dict, entity: dict) -> bool:
    """The read scene holds exactly the entity's shapes, in its layout, at one of its places."""
    seen = shape_facts(read["shapes"])
    for anchor in anchors(entity):
        if seen == shape_facts([{**p, "position": cell} for p, cell in zip(entity["parts"], entity_cells(entity, anchor))]):
            return True
    return False


def named_entities(text: str, names: Sequence[str]) -> list[str]:
    """The entity names ``text`` states, in order (whole words, any case), spelled as in ``names``."""
    if not names:
        return []
    canonical = {n.lower(): n for n in names}
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, sorted(canonical, key=len, reverse=True))) + r")\b", re.I)
    return [canonical[m.group(1).lower()] for m in pattern.finditer(text)]


def pick_items(record: dict, split: str, per_group: int, *, seed: int) -> dict[str, list[dict]]:
    """Up to ``per_group`` items of ``split`` from each group, drawn reproducibly by seed: head and tail, then
    the entities memory edits replaced or added (retrieval/edit_bank.py), when there are any."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 13]))
    items = record.get("items", {}).get(split, [])
    chosen = {}
    for group in [*GROUPS, *sorted({i["group"] for i in items} - set(GROUPS))]:
        pool = [i for i in items if i["group"] == group]
        order = rng.permutation(len(pool))[:per_group] if per_group > 0 else range(len(pool))
        chosen[group] = [pool[int(k)] for k in order]
    return chosen


@dataclass
class Retriever:
    """The memory bank searched for a prompt at evaluation time, under sampling's rules (``retrieve_for_prompt``)."""

    encoder: object
    bank: object
    documents: object
    """What the bank indexes (``BankDocuments``)."""
    settings: RetrievalConfig
    k: int
    seq_len: int
    """The training sequence length the context is cut to, with the prompt and what is sampled."""
    text_tokenizer: object = None
    """The run's text tokenizer: the hybrid retriever reads the prompt's words."""

    def context_for(self, prompt: list[int], vocab, max_new_tokens: int) -> list[int]:
        s = self.settings
        found = retrieve_for_prompt(prompt, encoder=self.encoder, bank=self.bank, documents=self.documents, vocab=vocab,
                                    k=self.k, candidates=s.candidates, max_similarity=s.max_similarity,
                                    centred_similarity=s.centred_similarity, text_tokenizer=self.text_tokenizer)  # fmt: skip
        records = [{"bank_id": f.bank_id, "tokens": f.tokens} for f in found]
        return prompt_with_context(prompt, records, vocab, seq_len=self.seq_len, max_new_tokens=max_new_tokens).tokens


def with_context(prompts: list[list[int]], vocab, retriever: Retriever | None, max_new_tokens: int) -> list[list[int]]:
    if retriever is None:
        return prompts
    return [retriever.context_for(p, vocab, max_new_tokens) for p in progress_bar(prompts, desc="retrieve", unit="prompt")]


def _share(correct: Sequence[bool]) -> dict:
    n = len(correct)
    return {"accuracy": sum(correct) / n if n else float("nan"), "ci95": wilson_interval(sum(correct), n), "items": n}


def words_before_drawing(model, vocab, prompts: list[list[int]], max_words: int) -> list[list[int] | None]:
    """What the model writes greedily after each prompt before it opens an image (as captions are written:
    the words are a function of what the prompt and its context say); None where it opens none within
    ``max_words`` tokens."""
    hw = vocab.grid[0] * vocab.grid[1]
    params = SamplingParams(max_new_tokens=max_words + hw + 2, temperature=0.0, max_images=1)
    with progress_bar(desc="entity descriptions", unit="step") as bar:
        outs = sample(model, vocab, prompts, params, progress=sampler_progress(bar))
    return [o[: o.index(vocab.boi)] if vocab.boi in o[: max_words + 1] else None for o in outs]


def entity_t2i(model, tokenizer, items: list[dict], entities: dict[str, dict], cfg: EvalConfig, image_size: int,
               retriever: Retriever | None = None) -> dict:  # fmt: skip
    """One image per item prompt; right when it shows exactly the named entity.

    With ``cfg.entity_describe_first`` the prompt ends after the request and the model first writes what it
    will draw (``words_before_drawing``, up to ``caption_max_tokens``), as the documents of
    ``world.entity_spell_out`` do; the image is then sampled after its words. An item whose model writes on
    without opening an image is wrong."""
    if not items:
        return _share([]) | {"examples": []}
    vocab = tokenizer.vocab
    texts = [cfg.t2i_template.format(caption=i["caption"]) for i in items]
    hw = vocab.grid[0] * vocab.grid[1]
    # room the retrieved context leaves: BOI and the codes, and before them the words, with EOI in case the
    # greedy pass draws its image at the very end of them
    budget = hw + 1 + (cfg.caption_max_tokens + 1 if cfg.entity_describe_first else 0)
    prompts = with_context([tokenizer.encode_parts([t], eos=False) for t in texts], vocab, retriever, budget)
    words: list[list[int] | None] = [[] for _ in prompts]
    if cfg.entity_describe_first:
        words = words_before_drawing(model, vocab, prompts, cfg.caption_max_tokens)
    drawn = [k for k, w in enumerate(words) if w is not None]
    params = SamplingParams(max_new_tokens=hw, temperature=cfg.t2i_temperature, top_k=cfg.t2i_top_k,
                            cfg_scale=cfg.t2i_cfg_scale, max_images=1, seed=cfg.seed, eos_stops=False,
                            jacobi_window=cfg.t2i_jacobi_window)  # fmt: skip
    images: list = [None] * len(items)
    if drawn:
        with progress_bar(desc="entity text-to-image", unit="step") as bar:
            outs = sample(model, vocab, [prompts[k] + words[k] + [vocab.boi] for k in drawn], params,
                          progress=sampler_progress(bar))  # fmt: skip
        for k, image in zip(drawn, sampled_images(tokenizer, outs, image_size)):
            images[k] = image
    correct = [im is not None and entity_shown(analyse_scene(im), entities[i["entity"]]) for im, i in zip(images, items)]
    written = [sampled_text(tokenizer, w or []) for w in words]
    examples = [{"prompt": t, "written": w, "image": im, "right": c}
                for t, w, im, c in zip(texts, written, images, correct)]  # fmt: skip
    return _share(correct) | {"examples": examples}


def entity_captions(model, tokenizer, items: list[dict], names: Sequence[str], cfg: EvalConfig, image_size: int,
                    retriever: Retriever | None = None) -> dict:  # fmt: skip
    """A greedy caption of each item's image; right when the first entity it names is the item's."""
    if not items:
        return _share([]) | {"examples": []}
    vocab = tokenizer.vocab
    images = [render_scene(i["scene"], image_size) for i in items]
    prompts = [tokenizer.encode_parts([cfg.caption_prompt, im, cfg.caption_lead], eos=False) for im in images]
    prompts = with_context(prompts, vocab, retriever, cfg.caption_max_tokens)
    params = SamplingParams(max_new_tokens=cfg.caption_max_tokens, temperature=0.0, max_images=0, seed=cfg.seed)
    with progress_bar(desc="entity captions", unit="step") as bar:
        outs = sample(model, vocab, prompts, params, progress=sampler_progress(bar))
    captions = sampled_captions(tokenizer, outs, cfg.caption_lead)
    correct = [named_entities(c, names)[:1] == [i["entity"]] for c, i in zip(captions, items)]
    examples = [{"image": im, "caption": c, "entity": i["entity"], "right": ok}
                for im, c, i, ok in zip(images, captions, items, correct)]  # fmt: skip
    return _share(correct) | {"examples": examples}


def document_groups(shards, groups: dict[str, str], limit: int = 0) -> dict[str, list[int]]:
    """Held-out documents by what they mention: 'entity_free', or the group of the entity their images show."""
    out: dict[str, list[int]] = {"entity_free": [], "head": [], "tail": []}
    for i in range(len(shards) if limit <= 0 else min(limit, len(shards))):
        shown = [n for scene in shards.metadata(i).get("images", []) for n in scene_entities(scene)]
        out[groups.get(shown[0], "tail") if shown else "entity_free"].append(i)
    return out


def mention_bits(model, shards, documents: dict[str, list[int]], vocab, *, max_len: int,
                 neighbours: np.ndarray | None = None, bank=None, seq_len: int = 0) -> dict:  # fmt: skip
    """Bits per text and image token of each group's main documents; after their neighbours (rows of the
    held-out neighbour table, read from ``bank``) when given, cut as training cuts them."""
    out = {}
    for group, ids in documents.items():
        docs = [shards[i] for i in ids]
        if not docs:  # no held-out document mentions an entity of this group: no figure, rather than 0 bits
            out[group] = {"text_bits_per_token": float("nan"), "image_bits_per_token": float("nan"), "documents": 0}
            continue
        if neighbours is None:
            prefixes = [[vocab.bos]] * len(docs)
        else:
            prefixes = [retrieved_prefix([bank[int(j)] for j in neighbours[i] if j >= 0], bos=vocab.bos, eos=vocab.eos,
                                         sep=vocab.sep, max_len=max(seq_len + 1 - len(d), 1), boi=vocab.boi,
                                         eoi=vocab.eoi) for i, d in zip(ids, docs)]  # fmt: skip
        bits = main_document_bits(model, docs, prefixes, image_range=vocab.image_range, max_len=max_len)
        out[group] = {**bits, "documents": len(docs)}
    return out


def knowledge_metrics(t2i: dict[str, dict], captions: dict[str, dict], bits: dict[str, dict], prefix: str) -> dict:
    """Flat metrics entries: ``<prefix>_t2i_accuracy_<group>`` and the like, each with interval and items."""
    metrics = {}
    for name, results in (("t2i_accuracy", t2i), ("caption_accuracy", captions)):
        for group, r in results.items():
            metrics |= with_interval(f"{prefix}_{name}_{group}", r["accuracy"], r["ci95"], r["items"])
    for group, b in bits.items():
        metrics[f"{prefix}_documents_{group}"] = b["documents"]
        if b["documents"]:  # a group no held-out document mentions has no figure (not NaN in metrics.json)
            for key in ("text_bits_per_token", "image_bits_per_token"):
                metrics[f"{prefix}_{key}_{group}"] = b[key]
                if f"{key}_ci95" in b:  # n: the documents the bootstrap resampled
                    metrics |= {f"{prefix}_{key}_{group}_ci95": b[f"{key}_ci95"], f"{prefix}_{key}_{group}_items": b["documents"]}
    return metrics


def entity_recall(items: list[dict], template: str, tokenizer, *, encoder, bank, documents, seed: int = 0) -> dict:
    """Recall@1/5 of each item's defining document for its text-to-image prompt (``template`` with its
    caption), against BM25, tf-idf and random retrieval (``defining_document_recall``)."""
    defining = defining_documents(documents)
    items = [i for i in items if i["entity"] in defining]
    queries = [tokenizer.encode_parts([template.format(caption=i["caption"])], eos=False) for i in items]
    return defining_document_recall(queries, [defining[i["entity"]] for i in items], encoder=encoder, bank=bank,
                                    documents=documents, vocab=tokenizer.vocab, seed=seed,
                                    text_tokenizer=tokenizer.text_tok)  # fmt: skip


def run_entity_recall(cfg: ExperimentConfig, paths: RunPaths, tokenizer, *, encoder, bank, documents,
                      group: str | None = None) -> dict:  # fmt: skip
    """``entity_recall`` over the run's entity items of ``eval.split`` (``eval.entity_items`` per group; those of
    ``group`` alone when given)."""
    e = cfg.eval
    chosen = pick_items(read_entities(paths.entities), e.split, e.entity_items, seed=e.seed)
    items = [i for g in chosen if group in (None, g) for i in chosen[g]]
    return entity_recall(items, e.t2i_template, tokenizer, encoder=encoder, bank=bank, documents=documents, seed=e.seed)


def recall_lines(recall: dict) -> list[str]:
    """One console line per retriever: recall@1 and @5 with their intervals and the number of prompts."""
    return [f"defining-document recall, {name:>13}: "
            + "  ".join(f"{k} {f[k]:.3f} [{f[k + '_ci95'][0]:.3f}, {f[k + '_ci95'][1]:.3f}]" for k in ("recall@1", "recall@5"))
            + f"  ({f['items']} entity prompts)" for name, f in recall.items()]  # fmt: skip


def load_knowledge_retriever(cfg: ExperimentConfig, paths: RunPaths, device) -> Retriever | None:
    """The run's retriever for evaluation (the training's number of neighbours), or None without encoder and bank."""
    try:
        encoder, bank = load_retriever(paths.retrieval_encoder, paths.memory_bank, device=device)
    except FileNotFoundError:
        return None
    return Retriever(encoder, bank, bank_documents(paths), cfg.retrieval, k=cfg.retrieval.neighbours,
                     seq_len=cfg.training.seq_len, text_tokenizer=load_text_tokenizer(paths))  # fmt: skip


def evaluate_knowledge(cfg: ExperimentConfig, paths: RunPaths, model, tokenizer, *,
                       retriever: Retriever | None = None, log=print_above) -> dict:  # fmt: skip
    """Every knowledge measurement of a run whose world has entities, without retrieval and, given a retriever,
    with it; returns ``{"metrics": flat entries, "runs": per mode the results with examples, "recall": ...}``."""
    e = cfg.eval
    record = read_entities(paths.entities)
    entities = {x["name"]: x for x in record["entities"]}
    chosen = pick_items(record, e.split, e.entity_items, seed=e.seed)
    shards = TokenShards(paths.tokens("heldout"))
    groups = {name: x["group"] for name, x in entities.items()}
    documents = document_groups(shards, groups, e.heldout_documents)
    vocab = tokenizer.vocab
    modes: dict[str, Retriever | None] = {"plain": None}
    if retriever is not None:
        modes["retrieval"] = retriever
    metrics: dict = {"entities": len(entities), "entities_head": sum(g == "head" for g in groups.values())}
    runs = {}
    for mode, r in modes.items():
        log(f"[knowledge] {mode} ...")
        t2i = {g: entity_t2i(model, tokenizer, chosen[g], entities, e, cfg.world.image_size, r) for g in chosen}
        captions = {g: entity_captions(model, tokenizer, chosen[g], list(entities), e, cfg.world.image_size, r)
                    for g in chosen}  # fmt: skip
        neighbours = None
        if r is not None:
            try:
                neighbours = load_neighbours(paths.neighbours("heldout"), shards)
            except FileNotFoundError:
                log("[knowledge] no held-out neighbour table: bits per token with retrieval skipped")
        bits = ({} if r is not None and neighbours is None else
                mention_bits(model, shards, documents, vocab, max_len=cfg.model.max_seq_len, neighbours=neighbours,
                             bank=r.documents if r else None, seq_len=cfg.training.seq_len))  # fmt: skip
        metrics |= knowledge_metrics(t2i, captions, bits, f"knowledge_{mode}")
        runs[mode] = {"t2i": t2i, "captions": captions, "bits": bits}
    recall = {}
    if retriever is not None:
        recall = run_entity_recall(cfg, paths, tokenizer, encoder=retriever.encoder, bank=retriever.bank,
                                   documents=retriever.documents)  # fmt: skip
        for name, figures in recall.items():
            for k in ("recall@1", "recall@5"):
                metrics |= with_interval(f"knowledge_{name}_{k}", figures[k], figures[f"{k}_ci95"], figures["items"])
    return {"metrics": metrics, "runs": runs, "recall": recall}
