"""Score the pretrained and the fine-tuned checkpoints side by side on the same held-out SFT prompts.

    python eval/compare_sft.py --config demo

Every fine-tuning run of the run folder (a folder named ``sft*`` holding a
``model.json``, e.g. ``sft`` and ``sft_lora``) is scored next to the pretrained
checkpoint.

Captioning and text-to-image attribute accuracy (text-to-image unguided and
with classifier-free guidance), visual QA accuracy, each with its chance
level; writes ``<run>/eval/sft_metrics.json``.
"""

import json
import posixpath

import fsspec

from mmgen.cli import run_cli, start_stage
from mmgen.data.token_shards import TokenShards
from mmgen.device import generation_device
from mmgen.eval.sft_eval import sft_eval
from mmgen.files import write_json
from mmgen.model.checkpoint import load_trained_model
from mmgen.model.lora import trainable_share
from mmgen.tokenizers.run import load_run_tokenizer


def main() -> None:
    stage = start_stage("compare_sft", __doc__)
    cfg, paths = stage.cfg, stage.paths
    device = generation_device()
    tokenizer = load_run_tokenizer(paths, device)
    shards = TokenShards(paths.tokens("sft-heldout"))
    fs, root = fsspec.core.url_to_fs(paths.root)
    tuned = sorted(posixpath.basename(p.rstrip("/")) for p in fs.ls(root, detail=False)
                   if posixpath.basename(p.rstrip("/")).startswith("sft") and fs.exists(posixpath.join(p, "model.json")))
    if not tuned:
        raise FileNotFoundError(f"no fine-tuning run under {paths.root} (run train/sft.py first)")
    runs = {"pretrained": paths.pretrain_dir, **{f: paths.sft_dir(f) for f in tuned}}
    results = {}
    for name, folder in runs.items():
        model, step = load_trained_model(folder, device=device)
        print(f"scoring {name} (step {step}) on {len(shards)} held-out SFT prompts")
        results[name] = {"step": step, **sft_eval(model, tokenizer, shards, seed=cfg.sample.seed,
                                                         per_task=cfg.eval.sft_prompts,
                                                         cfg_scales=cfg.eval.sft_cfg_scales,
                                                         temperature=cfg.eval.t2i_temperature,
                                                         top_k=cfg.eval.t2i_top_k)}
        with fsspec.open(posixpath.join(folder, "model.json"), "r") as f:
            description = json.load(f)
        if description.get("lora_rank"):
            from mmgen.model.lora import add_lora
            from mmgen.model.transformer import Transformer

            probe = add_lora(Transformer(model.cfg, model.vocab_size), rank=description["lora_rank"], alpha=description["lora_alpha"])
            results[name]["trainable_share"] = trainable_share(probe)
    keys = [k for k in results["pretrained"] if isinstance(results["pretrained"][k], float)]
    print(f"\n{'metric':<26}" + "".join(f"{n:>14}" for n in results))
    for key in keys:
        print(f"{key:<26}" + "".join(f"{r.get(key, float('nan')):>14.3f}" for r in results.values()))
    out = posixpath.join(paths.root, "eval", "sft_metrics.json")
    write_json(out, results)
    print(f"wrote {out}")
    stage.record_timing()


if __name__ == "__main__":
    run_cli(main)
