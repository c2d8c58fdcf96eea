#!/usr/bin/env bash
# The PyTorch dumper (docs/compare.md) against this project: dump_pytorch.py on the two shipped command-line cases
# of docs/models.md, then `qwenvl-adapter compare` on its dump must report a match at every stage; and the same in
# bf16 must match with --max-rel 0.1, not at the default tolerance; and --gradients must match too. Needs PyTorch
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
# A clean bf16 port (the dumper's --dtype bfloat16): beyond the float32 default tolerance, within --max-rel 0.1
# (docs/precision.md#comparing-a-16-bit-port).
bf16() {
  local name=$1 grids=$2
  local args=(--weights "data/cli/$name/weights.safetensors" --heads 2 --input "data/cli/$name/x.npy" --grids "$grids")
  /usr/bin/python3 tests/reference/dump_pytorch.py "${args[@]}" --out "$out/$name-bf16" --dtype bfloat16
  if "$cli" compare "${args[@]}" --theirs "$out/$name-bf16" >/dev/null; then
    echo "a bf16 port of $name matched at float32's tolerance"; exit 1
  fi
  "$cli" compare "${args[@]}" --theirs "$out/$name-bf16" --max-rel 0.1 | tail -1
}
bf16 qwen_wide 3x5
bf16 minicpmv_mixed 2x3,3x3,1x2
# The gradients (docs/compare.md#gradients): the dumper's autograd gradients of L = sum(proj * G), checked there
# against the module's own autograd, must match this project's backward on both paths, for both models.
gradients() {
  local name=$1 grids=$2
  local args=(--weights "data/cli/$name/weights.safetensors" --heads 2 --input "data/cli/$name/x.npy" --grids "$grids")
  /usr/bin/python3 tests/reference/dump_pytorch.py "${args[@]}" --out "$out/$name-gradients" --gradients --gradient-seed 7
  "$cli" compare "${args[@]}" --theirs "$out/$name-gradients" --gradients | tail -1
  "$cli" compare "${args[@]}" --theirs "$out/$name-gradients" --gradients --readable | tail -1
}
gradients qwen_wide 3x5
gradients minicpmv_mixed 2x3,3x3,1x2
