"""Drawing a named entity in two steps, measured apart: the words a model writes for an entity prompt, and
its drawing from the true words (a world with ``world.entity_spell_out``; docs/BENCHMARKS.md, Issue 13 part 3).

    python benchmarks/entity_steps.py --config demo --world.entities 300 --world.entity_spell_out 1 \\
        --eval.split validation [--groups tail,replaced,added] [--section.field VALUE ...] \\
        PRETRAIN_DIR[@STEP,STEP,...] ...

For each checkpoint and each group of entities (``--groups``: head, tail, and after retrieval/edit_bank.py the
``replaced`` and ``added`` ones; tail by default), on the group's items of ``eval.split`` (``eval.entity_items``
of them) with the run's retriever when it has one: the share of prompts whose greedy words state exactly the
scene's shapes, sizes, colours and cells, the share of the scene's shapes stated with all four right, and the share of
images drawn right after the request and the true sentence ("It is <the scene's caption>."), sampled at the
report's settings, each with its 95 % interval.
"""

import sys

from mmgen.cli import run_cli
from mmgen.config import RunPaths, load_config
from mmgen.data.entities import read_entities
from mmgen.data.shapes_world import describe_scene, parse_caption
from mmgen.eval.intervals import wilson_interval
from mmgen.eval.knowledge import (
    entity_shown, load_knowledge_retriever, pick_items, shape_facts, with_context, words_before_drawing,
)  # fmt: skip
from mmgen.eval.scene_analyser import analyse_scene
from mmgen.eval.shapes_eval import sampled_images
from mmgen.generation.captioning import sampled_text
from mmgen.generation.sampler import SamplingParams, sample
from mmgen.model.checkpoint import load_trained_model
from mmgen.tokenizers.run import load_run_tokenizer


def share(hits: int, n: int) -> str:
    lo, hi = wilson_interval(hits, n)
    return f"{hits / n:.3f} [{lo:.3f}, {hi:.3f}]"


def split_arguments(argv: list[str]) -> tuple[list[str], list[str], list[str]]:
    """(pretraining folders, config flags, entity groups): a flag is ``--section.field VALUE``,
    ``--section.field=VALUE`` or ``-h``/``--help``, as load_config reads them; ``--groups a,b`` (or
    ``--groups=a,b``) names the groups."""
    targets, flags, groups, k = [], [], ["tail"], 0
    while k < len(argv):
        if argv[k].startswith("--groups="):
            groups = [g for g in argv[k].partition("=")[2].split(",") if g]
            k += 1
        elif argv[k] == "--groups" and k + 1 < len(argv):
            groups = [g for g in argv[k + 1].split(",") if g]
            k += 2
        elif argv[k] in ("-h", "--help") or (argv[k].startswith("--") and "=" in argv[k]):
            flags.append(argv[k])
            k += 1
        elif argv[k].startswith("--"):
            flags += argv[k : k + 2]
            k += 2
        else:
            targets.append(argv[k])
            k += 1
    return targets, flags, groups


def main() -> None:
    targets, flags, groups = split_arguments(sys.argv[1:])
    cfg = load_config(flags, description=__doc__)
    if not targets:
        raise SystemExit("error: name at least one pretraining folder (PRETRAIN_DIR[@STEP,...])")
    paths, e = RunPaths(cfg.run_dir), cfg.eval
    tokenizer = load_run_tokenizer(paths, "cpu")
    vocab = tokenizer.vocab
    hw = vocab.grid[0] * vocab.grid[1]
    record = read_entities(paths.entities)
    entities = {x["name"]: x for x in record["entities"]}
    chosen = pick_items(record, e.split, e.entity_items, seed=e.seed)
    unknown = [g for g in groups if not chosen.get(g)]
    if not groups:
        raise SystemExit("error: --groups names no entity group (e.g. --groups tail,replaced,added)")
    if unknown:
        have = ", ".join(g for g in chosen if chosen[g])
        raise SystemExit(f"error: no {e.split} items of entity group(s) {', '.join(unknown)} (there are: {have})")
    retriever = load_knowledge_retriever(cfg, paths, "cpu")
    params = SamplingParams(max_new_tokens=hw, temperature=e.t2i_temperature, top_k=e.t2i_top_k, cfg_scale=e.t2i_cfg_scale,
                            seed=e.seed, eos_stops=False)  # fmt: skip
    prompts = {}
    for group in groups:
        items = chosen[group]
        requests = [tokenizer.encode_parts([e.t2i_template.format(caption=i["caption"])], eos=False) for i in items]
        told = [tokenizer.encode_parts([e.t2i_template.format(caption=i["caption"]) + f" It is {describe_scene(i['scene'])}."],
                                       eos=False) for i in items]  # fmt: skip
        prompts[group] = (items, with_context(requests, vocab, retriever, hw + 2 + e.caption_max_tokens),
                          [p + [vocab.boi] for p in with_context(told, vocab, retriever, hw + 1)])  # fmt: skip
        print(f"{len(items)} {group} entity prompts of the {e.split} split, retrieval {'on' if retriever else 'off'}")
    for target in targets:
        folder, _, steps = target.partition("@")
        for step in [int(s) for s in steps.split(",")] if steps else [-1]:
            model, step = load_trained_model(folder, step=step)
            for group, (items, requests, told) in prompts.items():
                words = words_before_drawing(model, vocab, requests, e.caption_max_tokens)
                exact = stated = total = 0
                for w, i in zip(words, items):
                    said = shape_facts(parse_caption(sampled_text(tokenizer, w or [])))
                    truth = shape_facts(i["scene"]["shapes"])
                    exact += said == truth
                    stated += sum(t in said for t in truth)
                    total += len(truth)
                images = sampled_images(tokenizer, sample(model, vocab, told, params), cfg.world.image_size)
                drawn = sum(entity_shown(analyse_scene(im), entities[i["entity"]]) for im, i in zip(images, items))
                print(f"{folder} step {step}, {group}: words exact {share(exact, len(items))}, shapes stated "
                      f"{share(stated, total)}, drawn right from the true words {share(drawn, len(items))}", flush=True)


if __name__ == "__main__":
    run_cli(main)
