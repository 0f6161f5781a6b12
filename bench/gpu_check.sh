#!/usr/bin/env bash
# The GPU check: prepared runs for a single-GPU CUDA machine without network.
#
#   bash bench/gpu_check.sh                    # (a)-(c) of bench/gpu_check.py: under 5 minutes
#   ZOO_GPU_E2E=only bash bench/gpu_check.sh   # only the launcher end to end (bench/gpu_e2e.py): about 5 minutes
#   ZOO_GPU_E2E=1 bash bench/gpu_check.sh      # both, one after the other: about 10 minutes
#   ZOO_GPU_THROUGHPUT=only bash bench/gpu_check.sh  # only transfer throughput (below): about 6 minutes
#   bash bench/gpu_check.sh --smoke            # the same code, tiny and on the CPU: checks the scripts only
#                                              # (with ZOO_GPU_E2E as above; the end-to-end smoke: ~2.5 min)
#
# Needs python3 with torch and timm (random weights: nothing is downloaded). (a)-(c) need neither Ray nor
# SQLAlchemy (the jobs run in-process through the same training and predict code the Ray workers call;
# dispatch cost is measured on the CPU by bench/scheduler.py); the end-to-end part runs `zoo-sweep launch`
# and needs both, and Alembic. Those missing are installed from the wheels `make gpu-wheels` wrote into
# $ZOO_WHEELS (default: .whl; *.whl there or in parts-1/ and parts-2/) into /tmp/zoo-site, which then goes on
# PYTHONPATH (tools/install_wheels.sh). Prints one "RESULT ..." line per figure; BENCHMARKS.md ("GPU")
# records them.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WHEELS=${ZOO_WHEELS:-.whl}
E2E=${ZOO_GPU_E2E:-0}
SMOKE=()
for arg in "$@"; do [ "$arg" = --smoke ] && SMOKE=(--smoke); done

launcher_deps() { $PY -c "import ray, sqlalchemy, alembic" 2>/dev/null; }
if launcher_deps; then
  echo "optional: ray, sqlalchemy and alembic present"
elif compgen -G "$WHEELS/*.whl" >/dev/null || compgen -G "$WHEELS/parts-*/*" >/dev/null; then
  if bash tools/install_wheels.sh "$WHEELS" /tmp/zoo-site "$PY"; then
    export PYTHONPATH=/tmp/zoo-site${PYTHONPATH:+:$PYTHONPATH}
  fi
  launcher_deps && echo "optional: ray, sqlalchemy and alembic installed from $WHEELS" \
    || echo "optional: ray, sqlalchemy or alembic still missing; only the end-to-end part needs them"
else
  echo "optional: ray, sqlalchemy or alembic missing and no wheels in $WHEELS; only the end-to-end part needs them"
fi
$PY -c "import torch, timm" || { echo "error: python3 needs torch and timm"; exit 2; }
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
export PYTHONUNBUFFERED=1
rc=0
TP=${ZOO_GPU_THROUGHPUT:-0}
if [ "$E2E" != only ] && [ "$TP" != only ]; then
  timeout "${ZOO_GPU_CHECK_TIMEOUT:-290}" $PY bench/gpu_check.py "$@"
  rc=$?
fi
# ZOO_GPU_PAIRS=1: also the compare stage on the GPU (all pair metrics, 1,000 models x 50,000 samples, CUDA
# kernel, best of 3, checked against the per-pair loop on a subset); about 2 more minutes, most of them making
# the synthetic records on the CPU
if [ "${ZOO_GPU_PAIRS:-0}" = 1 ]; then
  timeout "${ZOO_GPU_PAIRS_TIMEOUT:-240}" $PY bench/pairs_at_scale.py --kernel cuda --repeat 3 --ref-models 3 \
    --ref-samples 1000 | sed 's/^/pairs: /'
fi
# ZOO_GPU_THROUGHPUT=1 (after (a)-(c)) or only: transfer jobs against the hardware (about 6 minutes): kl_dp resnet50 <- convnext_tiny at
# 224 px, bf16, as the worker runs it, against a bare loop and timm-style rates, plain and with [run] compile and
# fused_optimizer (bench/transfer_throughput.py); 1, 2, 4 and 8 concurrent embedded-zoo jobs on the GPU and the
# share gpus_per_job = "auto" would pick (bench/gpu_share.py); the compare stage on this host's CPU
# (bench/pairs_at_scale.py --repeat 3). With --smoke: the same scripts, tiny and on the CPU.
if [ "$TP" = 1 ] || [ "$TP" = only ]; then
  if [ ${#SMOKE[@]} -eq 0 ]; then
    TT=(--zoo timm --student resnet50 --teacher convnext_tiny --method kl_dp --image-size 224 --batch-size 128
        --epochs 1 --repeat 2 --device cuda)
    SHARE=(--device cuda)
    PAIRS=(--repeat 3)
  else
    TT=(--method kl_dp --epochs 1 --repeat 1 --timm-rates)
    SHARE=(--device cpu --max-jobs 2 --seconds 2)
    PAIRS=(--models 50 --samples 2000 --repeat 1 --ref-models 3 --ref-samples 500)
  fi
  timeout "${ZOO_GPU_TT_TIMEOUT:-150}" $PY bench/transfer_throughput.py "${TT[@]}" | sed 's/^/throughput: /'
  timeout "${ZOO_GPU_TT_TIMEOUT:-150}" $PY bench/transfer_throughput.py "${TT[@]}" --compile --fused \
    | sed 's/^/throughput compiled: /'
  timeout "${ZOO_GPU_SHARE_TIMEOUT:-150}" $PY bench/gpu_share.py "${SHARE[@]}" | sed 's/^/share: /'
  timeout "${ZOO_GPU_PAIRS_CPU_TIMEOUT:-150}" $PY bench/pairs_at_scale.py "${PAIRS[@]}" | sed 's/^/pairs cpu: /'
fi
# ZOO_GPU_E2E=1 or only: `zoo-sweep launch --gpus 1` of a small timm sweep, then the same spec with --gpus 0,
# compared (bench/gpu_e2e.py)
if [ "$E2E" = 1 ] || [ "$E2E" = only ]; then
  if launcher_deps; then
    timeout "${ZOO_GPU_E2E_TIMEOUT:-420}" $PY bench/gpu_e2e.py "${SMOKE[@]}"
    e2e_rc=$?
  else
    echo "e2e: not run: ray, sqlalchemy or alembic missing (make gpu-wheels, then copy .whl here)"
    e2e_rc=2
  fi
  [ $rc -eq 0 ] && rc=$e2e_rc
fi
exit $rc
