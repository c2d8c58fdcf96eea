#!/usr/bin/env bash
# The fixture generator writes the same bytes whatever the CPU's kernels: it runs twice, once as the machine is
# set up and once with OpenBLAS's generic kernels (OPENBLAS_CORETYPE=Prescott), numpy's SIMD paths beyond its
# baseline switched off (NPY_DISABLE_CPU_FEATURES) and torch's vectorised kernels off (ATEN_CPU_CAPABILITY=default),
# and after each run `git status` of data/ must be clean. Run from the repository's root:
#   bash tests/reference/check_reproducible.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
python=/usr/bin/python3
# numpy's dispatched CPU features found on this machine (beyond its SSE3 baseline), to switch them off.
features=$($python -c 'import numpy.core._multiarray_umath as m
base = set(m.__cpu_baseline__)
print(" ".join(f for f in m.__cpu_dispatch__ if m.__cpu_features__.get(f) and f not in base))')
for run in default generic; do
  if [[ $run == default ]]; then
    echo "== generator as the machine is set up (OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-unset})"
    $python tests/reference/make_fixtures.py >/dev/null
  else
    echo "== generator with OPENBLAS_CORETYPE=Prescott, NPY_DISABLE_CPU_FEATURES=\"$features\", ATEN_CPU_CAPABILITY=default"
    OPENBLAS_CORETYPE=Prescott NPY_DISABLE_CPU_FEATURES="$features" ATEN_CPU_CAPABILITY=default \
      $python tests/reference/make_fixtures.py >/dev/null
  fi
  changed=$(git status --porcelain data/)
  if [[ -n "$changed" ]]; then
    echo "the generator did not reproduce these files:"
    echo "$changed"
    exit 1
  fi
  echo "data/ reproduced byte for byte"
done
