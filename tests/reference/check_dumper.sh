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
# Bad input (docs/compare.md: one line naming the file and the problem, exit 1, no dump): each case's stderr must be
# one line holding its words, and the output folder must not exist.
refused() {
  local words=$1; shift
  local err status=0
  err=$(/usr/bin/python3 tests/reference/dump_pytorch.py "$@" --heads 2 --grids 3x5 --out "$out/refused" 2>&1 >/dev/null) || status=$?
  if [ "$status" != 1 ] || [ "$(printf '%s\n' "$err" | wc -l)" != 1 ] || [[ "$err" != *"$words"* ]] || [ -e "$out/refused" ]; then
    echo "dump_pytorch.py $*: expected exit 1 and one line holding '$words', got exit $status:"; echo "$err"; exit 1
  fi
}
w=data/cli/qwen_wide/weights.safetensors x=data/cli/qwen_wide/x.npy
/usr/bin/python3 -c "import numpy as np; x = np.load('$x'); np.save('$out/narrow.npy', x[..., :-1]); np.save('$out/int.npy', x.astype(np.int32)); np.save('$out/4d.npy', x[None])"
head -c 3000 "$w" > "$out/truncated.safetensors"
refused "$out/narrow.npy: features of width Kv = 5, but the checkpoint's kv_proj takes 6" --weights "$w" --input "$out/narrow.npy"
refused "$out/int.npy: features of dtype int32" --weights "$w" --input "$out/int.npy"
refused "$out/4d.npy: features of shape (1, 2, 15, 6)" --weights "$w" --input "$out/4d.npy"
refused "$out/truncated.safetensors: not a readable safetensors file" --weights "$out/truncated.safetensors" --input "$x"
refused "$x: not a safetensors file" --weights "$x" --input "$x"
refused "$out/missing.npy: not a readable .npy file" --weights "$w" --input "$out/missing.npy"
if ! /usr/bin/python3 -c "import torch; h = torch.ones(2, 2, dtype=torch.float16); h @ h" 2>/dev/null; then
  refused "--dtype float16: PyTorch" --weights "$w" --input "$x" --dtype float16   # no float16 CPU kernels here
fi
echo "dump_pytorch.py refused its bad inputs with one line each"
