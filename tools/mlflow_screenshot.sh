#!/usr/bin/env bash
# The README's picture of a sweep's runs in the MLflow UI: starts an MLflow server (the full `mlflow` package,
# which has the UI; mlflow-skinny has none) on a fresh SQLite file, logs a stored sweep's runs to it with
# `zoo-sweep track`, and takes a headless Chromium screenshot of the experiment's runs.
#   bash tools/mlflow_screenshot.sh MLFLOW_BIN SWEEP ZOO_SWEEP_ARGS... (e.g. --home results --db sqlite:///results/zoo.db)
# writes docs/img/mlflow-runs.png
set -euo pipefail
cd "$(dirname "$0")/.."
mlflow=$1 sweep=$2
shift 2
tmp=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false "$mlflow" server --backend-store-uri "sqlite:///$tmp/mlflow.db" \
  --default-artifact-root "$tmp/artifacts" --host 127.0.0.1 --port "$port" --workers 1 >"$tmp/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; rm -rf "$tmp"' EXIT
for _ in $(seq 120); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 1; done
.venv/bin/zoo-sweep "$@" track "$sweep" --tracking "http://127.0.0.1:$port" --no-progress
id=$(curl -s "http://127.0.0.1:$port/api/2.0/mlflow/experiments/get-by-name?experiment_name=$sweep" |
     python3 -c 'import json, sys; print(json.load(sys.stdin)["experiment"]["experiment_id"])')
chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1600,900 --virtual-time-budget=20000 \
  --screenshot=docs/img/mlflow-runs.png "http://127.0.0.1:$port/#/experiments/$id/runs" 2>/dev/null
echo "docs/img/mlflow-runs.png: sweep $sweep, MLflow $("$mlflow" --version | awk '{print $NF}')"
