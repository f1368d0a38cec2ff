#!/usr/bin/env bash
# Which of the toy SFT stage's DMD choices matter: the AR-Drag student (configs/toy/sft.yaml, Self-Rollout) retrained
# with exactly one choice reverted to the plain DMD form, same seed and step count as the committed student
# (results/toy/checkpoints/sft/RECIPE.md), then every variant sampled with 1 and 3 steps per frame:
#   velocity  dmd.critic_weighting=velocity   (the critic's loss as unweighted velocity MSE)
#   exit      student.dmd_sample=exit          (DMD scores the spliced exit predictions, not the produced frames)
#   shift1    dmd.sigma_shift=1                (DMD noise levels drawn uniformly)
# and the two exit-prediction students (configs/toy/sft_no_rollout.yaml, sft_chunk3.yaml: the cache receives each
# chunk's exit prediction) with the DMD sample and exit-step rules they had before `dmd_sample: final` finished
# their chunks:
#   nr_exit, c3_exit              student.dmd_sample=exit   (DMD scores the exit predictions = their frames)
#   nr_exit_video, c3_exit_video  + student.exit_step=per_video (Self-Forcing's one exit step for all chunks)
#
#   bash scripts/dmd_ablation.sh        # trains them, three at a time (one torch thread each), resumable
#   ardrag-eval --config configs/eval/toy_dmd.yaml --publish    # -> results/toy_dmd/
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] && export PATH="$PWD/.venv/bin:$PATH"
RUNS=${RUNS:-runs/dmd_ablation}
STEPS=${SFT_STEPS:-180}
TEACHER=${TEACHER:-results/toy/checkpoints/teacher}
declare -A OVERRIDE=(
  [velocity]="--model.init_args.dmd.critic_weighting=velocity"
  [exit]="--model.init_args.student.dmd_sample=exit"
  [shift1]="--model.init_args.dmd.sigma_shift=1.0"
  [nr_exit]="--config configs/toy/sft_no_rollout.yaml --model.init_args.student.dmd_sample=exit"
  [c3_exit]="--config configs/toy/sft_chunk3.yaml --model.init_args.student.dmd_sample=exit"
  [nr_exit_video]="--config configs/toy/sft_no_rollout.yaml --model.init_args.student.dmd_sample=exit
    --model.init_args.student.exit_step=per_video"
  [c3_exit_video]="--config configs/toy/sft_chunk3.yaml --model.init_args.student.dmd_sample=exit
    --model.init_args.student.exit_step=per_video"
)
train() {
  local name=$1
  if [ ! -f "$RUNS/$name/export/ardrag_pipeline.json" ]; then
    # shellcheck disable=SC2086
    OMP_NUM_THREADS=1 ardrag-fit --config configs/toy/sft.yaml --model.init_args.teacher="$TEACHER" \
      ${OVERRIDE[$name]} --trainer.max_steps="$STEPS" --checkpoint_every=$((STEPS / 4)) \
      --trainer.default_root_dir="$RUNS/$name" --ckpt_path last > "$RUNS/$name.log" 2>&1
    ardrag-export --ckpt "$(ls "$RUNS/$name"/checkpoints/step*.ckpt | sort | tail -1)" --dtype bfloat16 \
      --out "$RUNS/$name/export"
  fi
}
mkdir -p "$RUNS"
status=0
for name in velocity exit shift1 nr_exit c3_exit nr_exit_video c3_exit_video; do
  while (($(jobs -rp | wc -l) >= 3)); do wait -n || status=1; done
  train "$name" &
done
while (($(jobs -rp | wc -l) > 0)); do wait -n || status=1; done
exit $status
