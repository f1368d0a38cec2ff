#!/usr/bin/env bash
# The whole toy recipe from scratch on a CPU: data -> teacher -> SFT (Self-Rollout DMD) and its two ablation
# students -> RL (GRPO) -> committed checkpoints -> benchmark tables, reward curve and GIF strip.
#
#   bash scripts/toy_recipe.sh            # every stage resumes (--ckpt_path last); a finished stage is skipped
#   CKPTS=runs/recipe/checkpoints TRAIN_ONLY=1 bash scripts/toy_recipe.sh   # the training stages only, e.g. to time
#                                             # them, exporting beside the runs (committed checkpoints untouched):
#   python scripts/recipe_notes.py walltime --runs runs/recipe --out results/training/recipe_run
#
# Step counts: by default the teacher trains 300 steps and each student 180 (the configs' max_steps overridden, a
# checkpoint every quarter, third or half of it), the sizes of the committed checkpoints (their RECIPE.md files).
# Timed from scratch on a quiet 2-core Intel Xeon (results/training/recipe_run.md): 25.5 min of training (toy world
# 0.5, teacher 8.3, the three students side by side 12.7, RL 4.0).
#   TEACHER_STEPS=config SFT_STEPS=config bash scripts/toy_recipe.sh   # the configs' own max_steps (800 / 600)
#   TEACHER_STEPS=400 SFT_STEPS=300 bash scripts/toy_recipe.sh          # any other count
#
# This REGENERATES the committed artifacts: results/toy/checkpoints/{teacher,sft,sft_no_rollout,sft_chunk3,rl}
# (bf16 exports with a RECIPE.md each) and results/toy/ (tables, reward curve, samples). Training runs go to
# $RUNS (default runs/recipe, git-ignored). Wall time per stage is printed and written to $RUNS/walltime.tsv.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] && export PATH="$PWD/.venv/bin:$PATH"
RUNS=${RUNS:-runs/recipe}
DATA=${DATA:-data/toyworld}
CKPTS=${CKPTS:-results/toy/checkpoints}   # another folder times the recipe without replacing the committed checkpoints
mkdir -p "$RUNS"

stage() {  # stage NAME THREADS TITLE ardrag-fit-ARGS...: train into $RUNS/NAME (resumable), export bf16 to $CKPTS/NAME
  local name=$1 threads=$2 title=$3
  shift 3
  local t0=$SECONDS
  if [ ! -f "$RUNS/$name/export/ardrag_pipeline.json" ]; then
    echo "== $name: ardrag-fit $* (OMP_NUM_THREADS=$threads)"
    OMP_NUM_THREADS=$threads ardrag-fit "$@" --trainer.default_root_dir="$RUNS/$name" --ckpt_path last
  else
    echo "== $name: already trained ($RUNS/$name/export)"
  fi
  local last
  last=$(ls "$RUNS/$name"/checkpoints/step*.ckpt | sort | tail -1)
  ardrag-export --ckpt "$last" --dtype bfloat16 --out "$CKPTS/$name"
  python scripts/recipe_notes.py checkpoint --run "$RUNS/$name" --out "$CKPTS/$name" --title "$title" --command \
    "OMP_NUM_THREADS=$threads ardrag-fit $* --trainer.default_root_dir=$RUNS/$name --ckpt_path last
ardrag-export --ckpt $last --dtype bfloat16 --out $CKPTS/$name
# or all stages at once: bash scripts/toy_recipe.sh"
  printf '%s\t%s\t%s\n' "$name" "$((SECONDS - t0))" "$last" >> "$RUNS/walltime.tsv"
}

steps() {  # steps N: ardrag-fit overrides for N training steps (nothing for N = config: the config's own)
  [ "$1" = config ] && return 0
  [[ "$1" =~ ^[1-9][0-9]*$ ]] || { echo "step count must be a positive integer or 'config', got '$1'" >&2; exit 2; }
  local every=$1 d
  for d in 4 3 2; do if (($1 % d == 0)); then every=$(($1 / d)); break; fi; done
  echo "--trainer.max_steps=$1 --checkpoint_every=$every"
}
TS=$(steps "${TEACHER_STEPS:-300}")
SS=$(steps "${SFT_STEPS:-180}")

echo "== data: toy world in $DATA"
t0=$SECONDS
ardrag-toyworld "$DATA"
printf 'data\t%s\t%s\n' "$((SECONDS - t0))" "$DATA" >> "$RUNS/walltime.tsv"
stage teacher 2 "teacher: the toy bidirectional motion-conditioned teacher (20-step sampler)" --config configs/toy/teacher.yaml $TS
# The three SFT students distil the freshly trained teacher side by side, one torch thread each (on 2 cores three
# single-thread runs finish sooner than three two-thread runs in a row); their logs go to $RUNS/<name>.log
T="--model.init_args.teacher=$RUNS/teacher/export"
stage sft 1 "sft: the AR-Drag toy student (frame-wise, Self-Rollout, DMD from the teacher)" --config configs/toy/sft.yaml "$T" $SS \
  > "$RUNS/sft.log" 2>&1 &
stage sft_no_rollout 1 "sft_no_rollout: ablation without Self-Rollout (exit-prediction cache update, chunk 1)" \
  --config configs/toy/sft.yaml --config configs/toy/sft_no_rollout.yaml "$T" $SS > "$RUNS/sft_no_rollout.log" 2>&1 &
stage sft_chunk3 1 "sft_chunk3: Self-Forcing-style baseline (exit-prediction cache update, chunk 3)" \
  --config configs/toy/sft.yaml --config configs/toy/sft_chunk3.yaml "$T" $SS > "$RUNS/sft_chunk3.log" 2>&1 &
for job in $(jobs -p); do wait "$job" || { echo "an SFT stage failed: see $RUNS/sft*.log" >&2; exit 1; }; done
stage rl 2 "rl: AR-Drag (full), GRPO of the sft student with the tracker motion reward" --config configs/toy/rl.yaml --model.init_args.init="$RUNS/sft/export"
if [ -n "${TRAIN_ONLY:-}" ]; then
  echo "done (TRAIN_ONLY): checkpoints in $CKPTS, stage wall times in $RUNS/walltime.tsv"
  exit 0
fi
t0=$SECONDS

echo "== benchmark: ardrag-eval --config configs/eval/toy.yaml (results/toy/)"
# the table's "initial model" row: the untrained toy backbone (configs/eval/toy.yaml reads it from runs/toy/export/init)
ardrag-export --pipeline-config configs/pipeline/toy.json --preset toy --seed 0 --out runs/toy/export/init
ardrag-eval --config configs/eval/toy.yaml --publish
python scripts/plot_reward_curve.py "$RUNS/rl" --out results/toy/reward_curve
python scripts/sample_strip.py --suite "$DATA/test" --items 4 --seed 0 --scale 2 \
  --method "Ground truth=groundtruth" --method "Teacher=pipeline:$CKPTS/teacher" \
  --method "w/o RL=pipeline:$CKPTS/sft" --method "AR-Drag=pipeline:$CKPTS/rl" --out results/toy/samples.gif
ardrag-eval --config configs/eval/sft_check.yaml --publish
python scripts/long_horizon.py --frames 81 --clips 4 --seeds 0 1 2 \
  --method "AR-Drag=pipeline:$CKPTS/rl" --method "w/o Self-Rollout=pipeline:$CKPTS/sft_no_rollout" \
  --method "Warp=warp" --out results/toy/long_horizon
printf 'benchmark\t%s\t\n' "$((SECONDS - t0))" >> "$RUNS/walltime.tsv"
echo "done: checkpoints in $CKPTS, tables in results/toy/, stage wall times in $RUNS/walltime.tsv"
