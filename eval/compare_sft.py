"""Score the pretrained and the fine-tuned checkpoints side by side on the same held-out SFT prompts.

    python eval/compare_sft.py --config demo
    python eval/compare_sft.py --config demo --eval.split validation --eval.sft_cfg_scales 1,2,3

Every fine-tuning run of the run folder (a folder named ``sft*`` holding a
``model.json``, e.g. ``sft`` and ``sft_lora``) is scored next to the pretrained
checkpoint.

Captioning and text-to-image attribute accuracy (text-to-image unguided and
with classifier-free guidance), visual QA accuracy, each with its chance
level, and each fine-tuned checkpoint's gain over the pretrained one on the same prompts
(``<accuracy>_gain``, with a paired interval); writes ``<run>/eval/sft_metrics.json``. With ``--eval.split validation``
(for choosing settings: guidance scale, SFT mixture, pretraining options) it
scores the validation SFT prompts instead and writes
``<run>/eval/sft_metrics_validation.json``, leaving the held-out figures alone.
"""

from mmgen.cli import run_cli, start_stage
from mmgen.device import generation_device
from mmgen.eval.sft_eval import fine_tuning_runs, lora_trainable_share, paired_gains, sft_eval, sft_prompts
from mmgen.files import write_json
from mmgen.model.checkpoint import load_trained_model
from mmgen.tokenizers.run import load_run_tokenizer


def main() -> None:
    stage = start_stage("compare_sft", __doc__)
    cfg, paths = stage.cfg, stage.paths
    split = cfg.eval.split
    if split != "heldout":  # its own timing record: the minutes per stage stay those of the held-out comparison
        stage.name = f"compare_sft_{split}"
    shards = sft_prompts(paths, split, cfg.name)
    device = generation_device()
    tokenizer = load_run_tokenizer(paths, device)
    runs = {"pretrained": paths.pretrain_dir, **fine_tuning_runs(paths)}
    results = {}
    for name, folder in runs.items():
        model, step = load_trained_model(folder, device=device)
        print(f"scoring {name} (step {step}) on {len(shards)} {split} SFT prompts")
        results[name] = {"step": step, **sft_eval(model, tokenizer, shards, seed=cfg.sample.seed,
                                                         per_task=cfg.eval.sft_prompts,
                                                         cfg_scales=cfg.eval.sft_cfg_scales,
                                                         temperature=cfg.eval.t2i_temperature,
                                                         top_k=cfg.eval.t2i_top_k,
                                                         jacobi_window=cfg.eval.t2i_jacobi_window)}
        share = lora_trainable_share(folder, model)
        if share is not None:
            results[name]["trainable_share"] = share
        if name != "pretrained":
            results[name] |= paired_gains(results[name], results["pretrained"], seed=cfg.sample.seed)
    keys = list(dict.fromkeys(k for r in results.values() for k, v in r.items() if isinstance(v, float)))
    print(f"\n{'metric':<26}" + "".join(f"{n:>14}" for n in results))
    for key in keys:
        print(f"{key:<26}" + "".join(f"{r.get(key, float('nan')):>14.3f}" for r in results.values()))
    write_json(paths.for_split(paths.sft_metrics, split), results)
    print(f"wrote {paths.for_split(paths.sft_metrics, split)}")
    stage.record_timing()


if __name__ == "__main__":
    run_cli(main)
