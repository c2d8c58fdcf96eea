#!/usr/bin/env bash
# The query-count ablation's longer runs (docs/training.md#the-query-count-ablation, notebook 08): the reconstruct
# task with 64, 144, 256 and 400 queries, and without the 2-D position tables (256 queries at E = 32; each count at
# E = 256); each run's loss.csv copied to the output folder. Two settings:
#   bash notebooks/ablation_runs.sh [path/to/qwenvl-adapter]
#       256 keys (16 x 16), E = 32, 1500 steps: data/training/ablation/ (about 22 minutes on the readable stages, one
#       thread, before `train` ran the fast path)
#   WIDE=1 bash notebooks/ablation_runs.sh [path/to/qwenvl-adapter]
#       1024 keys (32 x 32), E = 256, 1000 steps: data/training/ablation-e256/ (the fast path, 2 threads; the eight
#       runs about 40 minutes)
# From the repository's root, after the README's build.
set -euo pipefail
cd "$(dirname "$0")/.."
adapter=${1:-build/release/qwenvl-adapter}
if [ "${WIDE:-0}" = 1 ]; then
  steps=1000 keys=1024 width=256 folder=data/training/ablation-e256 no_positions="64 144 256 400"
else
  steps=1500 keys=256 width=32 folder=data/training/ablation no_positions=256
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
for queries in $no_positions; do
  "$adapter" $common --queries "$queries" --no-positions --out "$work/q$queries-no-positions"
  cp "$work/q$queries-no-positions/loss.csv" "$folder/q$queries-no-positions.csv"
done
echo "wrote $folder/: $(cd "$folder" && echo *.csv)"
