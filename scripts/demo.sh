#!/usr/bin/env bash
# The whole pipeline on the embedded shapes world, every stage in order:
#   corpus -> text tokenizer -> image tokenizer -> token shards -> pretraining (2 ranks) -> sample
#   -> SFT -> SFT comparison -> evaluation report (with the learning curve) -> summary
# Usage: scripts/demo.sh [CONFIG] [--section.field VALUE ...]   (CONFIG defaults to demo)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
CONFIG=${1:-demo}
shift || true
PY=.venv/bin/python
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}
run() { echo; echo "=== $*"; "$@"; }
# glibc malloc settings for the training ranks (mmgen/allocator.py: +5 % tokens/s here); yours win if set
ALLOC=$($PY -m mmgen.allocator)
run $PY data/make_world.py --config "$CONFIG" "$@"
run $PY tokenizers/train_text.py --config "$CONFIG" "$@"
run $PY tokenizers/train_image.py --config "$CONFIG" "$@"
run $PY tokenizers/encode.py --config "$CONFIG" "$@"
# one thread per rank: two ranks share the two cores
OMP_NUM_THREADS=1 run env $ALLOC .venv/bin/torchrun --standalone --nproc_per_node=2 train/pretrain.py --config "$CONFIG" "$@"
run $PY eval/sample.py --config "$CONFIG" "$@"
# fine-tuning: the task mixture and full SFT, then scored against the pretrained checkpoint
# (LoRA is one flag away, README "Fine-tuning"; the demo spends its minutes on pretraining instead)
run $PY tokenizers/encode_sft.py --config "$CONFIG" "$@"
OMP_NUM_THREADS=1 run env $ALLOC .venv/bin/torchrun --standalone --nproc_per_node=2 train/sft.py --config "$CONFIG" "$@"
run $PY eval/compare_sft.py --config "$CONFIG" "$@"
# the report covers the pretrained model and shows the fine-tuned ones beside it
run $PY eval/report.py --config "$CONFIG" "$@"
run $PY eval/summary.py --config "$CONFIG" "$@"
