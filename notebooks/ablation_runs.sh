#!/usr/bin/env bash
# The query-count ablation's longer runs (docs/training.md#the-query-count-ablation, notebook 08): the reconstruct
# task with 64, 144, 256 and 400 queries, and 256 queries without the 2-D position tables; each run's loss.csv
# copied to the output folder. Two settings:
#   bash notebooks/ablation_runs.sh [path/to/qwenvl-adapter]
#       256 keys (16 x 16), E = 32, 1500 steps: data/training/ablation/ (about 22 minutes on the readable stages, one
#       thread, before `train` ran the fast path)
#   WIDE=1 bash notebooks/ablation_runs.sh [path/to/qwenvl-adapter]
#       1024 keys (32 x 32), E = 256, 1000 steps: data/training/ablation-e256/ (the fast path, 2 threads)
# From the repository's root, after the README's build.
set -euo pipefail
cd "$(dirname "$0")/.."
adapter=${1:-build/release/qwenvl-adapter}
if [ "${WIDE:-0}" = 1 ]; then
  steps=1000 keys=1024 width=256 folder=data/training/ablation-e256
else
  steps=1500 keys=256 width=32 folder=data/training/ablation
fi
common="train --task reconstruct --keys $keys --width $width --heads 4 --batch 8 --steps $steps --warmup 100 --seed 1
        --log-every 250 --save-every $steps"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$folder"
for queries in 64 144 256 400; do
  "$adapter" $common --queries "$queries" --out "$work/q$queries"
  cp "$work/q$queries/loss.csv" "$folder/q$queries.csv"
done
"$adapter" $common --queries 256 --no-positions --out "$work/q256-no-positions"
cp "$work/q256-no-positions/loss.csv" "$folder/q256-no-positions.csv"
echo "wrote $folder/: q64.csv q144.csv q256.csv q400.csv q256-no-positions.csv"
