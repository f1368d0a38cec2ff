#!/usr/bin/env bash
# The whole toy pipeline on a CPU, each stage resumable (a finished stage is skipped on re-run):
#   1. data: the toy world (train/val/test shards with exact trajectories)
#   2. model: the initial (untrained) toy pipeline, exported; training stages plug in here (see README "Status")
#   3. a sample video from a real photo and a drag file
#   4. the benchmark on the toy test split: tables in runs/eval/toy/results/ (git-ignored; the committed
#      results/toy/ are regenerated only with `ardrag-eval --config configs/eval/toy.yaml --publish`)
# Run from the repository root after `bash scripts/setup.sh`. Set RUNS=... to write elsewhere than runs/toy.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] && export PATH="$PWD/.venv/bin:$PATH"
RUNS=${RUNS:-runs/toy}
DATA=${DATA:-data/toyworld}

echo "== 1/4 data: toy world in $DATA"
ardrag-toyworld "$DATA"

echo "== 2/4 model: initial toy pipeline in $RUNS/export/init"
if [ ! -f "$RUNS/export/init/ardrag_pipeline.json" ]; then
  ardrag-export --pipeline-config configs/pipeline/toy.json --preset toy --seed 0 --out "$RUNS/export/init"
fi
echo "   (teacher / SFT with Self-Rollout / GRPO stages are not implemented yet: see README 'Status')"

echo "== 3/4 sample: $RUNS/samples/astronaut.mp4"
ardrag-generate --checkpoint "$RUNS/export/init" \
  --image "$(python -c 'from ardrag.assets import skimage_photo; print(skimage_photo("astronaut.png"))')" \
  --trajectory configs/examples/astronaut_drag.json --out "$RUNS/samples/astronaut.mp4" --gif --seed 0

echo "== 4/4 benchmark: ardrag-eval --config configs/eval/toy.yaml"
ardrag-eval --config configs/eval/toy.yaml
echo "done: tables in runs/eval/toy/results/, videos in $RUNS/samples/"
