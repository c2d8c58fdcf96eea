#!/usr/bin/env bash
# The query-count ablation's longer runs (docs/training.md#the-query-count-ablation, notebook 08): the reconstruct
# task on 256 keys (16 x 16, as the paper's Appendix E.2) with 64, 144, 256 and 400 queries, and 256 queries without
# the 2-D position tables; each run's loss.csv copied to data/training/ablation/. About 22 minutes on one core of
# this project's machines (the readable stages, one thread). From the repository's root, after the README's build:
#   bash notebooks/ablation_runs.sh [path/to/qwenvl-adapter]
set -euo pipefail
cd "$(dirname "$0")/.."
adapter=${1:-build/release/qwenvl-adapter}
steps=1500
common="train --task reconstruct --keys 256 --width 32 --heads 4 --batch 8 --steps $steps --warmup 100 --seed 1
        --log-every 250 --save-every $steps"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p data/training/ablation
for queries in 64 144 256 400; do
  "$adapter" $common --queries "$queries" --out "$work/q$queries"
  cp "$work/q$queries/loss.csv" "data/training/ablation/q$queries.csv"
done
"$adapter" $common --queries 256 --no-positions --out "$work/q256-no-positions"
cp "$work/q256-no-positions/loss.csv" data/training/ablation/q256-no-positions.csv
echo "wrote data/training/ablation/: q64.csv q144.csv q256.csv q400.csv q256-no-positions.csv"
