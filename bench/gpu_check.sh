#!/usr/bin/env bash
# The GPU check: one prepared run for a single-GPU CUDA machine without network, under 5 minutes.
#
#   bash bench/gpu_check.sh            # on the GPU machine, from the repository root (or anywhere)
#   bash bench/gpu_check.sh --smoke    # the same code, tiny and on the CPU: checks the script only
#
# Needs python3 with torch and timm (random weights: nothing is downloaded). Ray and SQLAlchemy are not
# needed by any part (the jobs run in-process through the same training and predict code the Ray workers
# call; dispatch cost is measured on the CPU by bench/scheduler.py). If they are missing and wheels were
# brought along in $ZOO_WHEELS (default: .whl), they are installed from there; either way the script says
# which. Prints one "RESULT ..." line per figure; BENCHMARKS.md ("GPU") records them.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WHEELS=${ZOO_WHEELS:-.whl}

for pkg in ray sqlalchemy; do
  if $PY -c "import $pkg" 2>/dev/null; then
    echo "optional: $pkg present"
  elif compgen -G "$WHEELS/*.whl" >/dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/zoo-site "$WHEELS"/*.whl \
      && export PYTHONPATH=/tmp/zoo-site${PYTHONPATH:+:$PYTHONPATH}
    $PY -c "import $pkg" 2>/dev/null && echo "optional: $pkg installed from $WHEELS" \
      || echo "optional: $pkg missing (not in $WHEELS); nothing here needs it"
  else
    echo "optional: $pkg missing and no wheels in $WHEELS; nothing here needs it"
  fi
done
$PY -c "import torch, timm" || { echo "error: python3 needs torch and timm"; exit 2; }
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
export PYTHONUNBUFFERED=1
timeout "${ZOO_GPU_CHECK_TIMEOUT:-290}" $PY bench/gpu_check.py "$@"
rc=$?
# ZOO_GPU_PAIRS=1: also the compare stage on the GPU (all pair metrics, 1,000 models x 50,000 samples, CUDA
# kernel, best of 3, checked against the per-pair loop on a subset); about 2 more minutes, most of them making
# the synthetic records on the CPU
if [ "${ZOO_GPU_PAIRS:-0}" = 1 ]; then
  timeout "${ZOO_GPU_PAIRS_TIMEOUT:-240}" $PY bench/pairs_at_scale.py --kernel cuda --repeat 3 --ref-models 3 \
    --ref-samples 1000 | sed 's/^/pairs: /'
fi
exit $rc
