#!/usr/bin/env bash
# edgeq guards itself: this revision's zoo export against the committed baseline (reports/baseline.json and the
# artifacts it measured, in reports/baseline/), timed interleaved on this machine. Exit 1 on a regression.
#   scripts/ci_gate.sh            gate (what .ci/run does)
#   scripts/ci_gate.sh --update   make this revision the baseline (after a change that is meant to move it)
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
edgeq report zoo:mobilevit_xxs --recipes w8a8-fast --targets x86-cpu-ort --runs 50 --eval-limit 2000 \
  --no-incumbents --keep-artifacts -o "$work/current" > "$work/report.log" 2>&1 || { cat "$work/report.log"; exit 2; }
if [ "${1:-}" = "--update" ]; then
  rm -rf reports/baseline && mkdir -p reports/baseline
  cp "$work/current/report.json" reports/baseline.json
  for variant in fp32 w8a8-fast; do cp "$work/current/artifacts/$variant.onnx"* reports/baseline/; done
  echo "baseline updated: reports/baseline.json, reports/baseline/"
  exit 0
fi
# generous limits: CI machines are shared, and this guards against a change that clearly slows the exports
edgeq gate --baseline reports/baseline.json --current "$work/current" --mode interleaved \
  --variant w8a8-fast --variant fp32 --max-slowdown 0.25 --max-drop 0.5 --max-size-growth 0.10 \
  --threads 1 --summary "$work/gate.md" || status=$?
exit "${status:-0}"
