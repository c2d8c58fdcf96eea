#!/usr/bin/env bash
# The PyTorch dumper (docs/compare.md) against this project: dump_pytorch.py on the two shipped command-line cases
# of docs/models.md, then `qwenvl-adapter compare` on its dump must report a match at every stage. Needs PyTorch
# (bash .ci/install-deps --python) and the Release build. Run from the repository's root:
#   bash tests/reference/check_dumper.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
cli=./build/release/qwenvl-adapter
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
check() {
  local name=$1 grids=$2
  local args=(--weights "data/cli/$name/weights.safetensors" --heads 2 --input "data/cli/$name/x.npy" --grids "$grids")
  /usr/bin/python3 tests/reference/dump_pytorch.py "${args[@]}" --out "$out/$name"
  "$cli" compare "${args[@]}" --theirs "$out/$name" | tail -1
}
check qwen_wide 3x5
check minicpmv_mixed 2x3,3x3,1x2
