#!/usr/bin/env bash
# The README's main job on a CPU: RL (GRPO) of the committed toy SFT student, then a sample GIF.
#   1. data: the toy world (train/val/test shards with exact trajectories; skipped when present)
#   2. RL: ardrag-fit --config configs/toy/rl.yaml from results/toy/checkpoints/sft (resumes with --ckpt_path last;
#      TensorBoard logs in $RUNS/rl/tb, checkpoints in $RUNS/rl/checkpoints, the exported pipeline in $RUNS/rl/export)
#   3. reward curve: $RUNS/reward_curve.png (per-batch rewards; val/reward/*: fixed validation conditions), printed
#   4. samples: a GIF of toy test clips, ground truth / the SFT student / this run's RL export, drags drawn
# Run from the repository root after `bash scripts/setup.sh`. Writes only to $RUNS (default runs/toy, git-ignored).
# Extra arguments go to ardrag-fit, e.g. `bash scripts/run_toy.sh --trainer.max_steps=20` for a quick look.
# The whole recipe from scratch (teacher, SFT students, RL, tables): scripts/toy_recipe.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] && export PATH="$PWD/.venv/bin:$PATH"
RUNS=${RUNS:-runs/toy}
DATA=${DATA:-data/toyworld}

echo "== 1/4 data: toy world in $DATA"
ardrag-toyworld "$DATA"

echo "== 2/4 RL: ardrag-fit --config configs/toy/rl.yaml (from results/toy/checkpoints/sft) -> $RUNS/rl"
ardrag-fit --config configs/toy/rl.yaml --trainer.default_root_dir="$RUNS/rl" --ckpt_path last \
  --data.init_args.train_shards="$DATA/train" --data.init_args.val_shards="$DATA/val" "$@"

echo "== 3/4 reward curve: $RUNS/reward_curve.png"
python scripts/plot_reward_curve.py "$RUNS/rl" --out "$RUNS/reward_curve"

echo "== 4/4 samples: $RUNS/samples/rl.gif"
python scripts/sample_strip.py --suite "$DATA/test" --items 4 --seed 0 \
  --method "Ground truth=groundtruth" --method "SFT student=pipeline:results/toy/checkpoints/sft" \
  --method "after RL (this run)=pipeline:$RUNS/rl/export" --out "$RUNS/samples/rl.gif"
echo "done: TensorBoard logs: tensorboard --logdir $RUNS/rl; pipeline: $RUNS/rl/export; GIF: $RUNS/samples/rl.gif"
