#!/usr/bin/env bash
# A ctfa pipeline driven by the verbs' --json output and jq, usable as a CI quality gate:
# prepare synthetic scenes → train the cpu preset → evaluate the segmentation on the held-out
# test split → exit 1 when its mIoU is below a threshold.
#
# Usage: examples/pipeline.sh [MIN_MIOU]      (default: $CTFA_MIN_MIOU, else 0.2)
#
# Environment (all optional):
#   CTFA_WORK    folder for DATA_DIR, RUN_DIR, reports and stage JSON   (default ./ctfa-pipeline)
#   CTFA_SCENES  synthetic scenes to draw                               (default 8)
#   CTFA_SIZE    scene size in pixels                                   (default 640)
#   CTFA_ITERS   training steps                                         (default: the preset's)
#   CTFA_SET     more training overrides, "key=value key=value …"       (e.g. "batch_size=2")
#   CTFA_DEVICE  auto, cpu, cuda or cuda:N                              (default auto)
#
# Each stage writes its JSON summary to $CTFA_WORK/<stage>.json and is skipped on a re-run when
# that file exists, so changing the threshold re-checks without recomputing; an interrupted
# training resumes. Remove $CTFA_WORK to start over.
#
# stdout: one JSON line {"miou", "min_miou", "pass", "model"}; progress and logs on stderr.
set -euo pipefail

min_miou=${1:-${CTFA_MIN_MIOU:-0.2}}
if ! min_miou=$(jq -n --arg m "$min_miou" '$m | tonumber' 2>/dev/null); then
  echo "usage: $0 [MIN_MIOU]: MIN_MIOU must be a number such as 0.3" >&2
  exit 2
fi
work=${CTFA_WORK:-ctfa-pipeline}
device=${CTFA_DEVICE:-auto}
mkdir -p "$work"

# stage NAME COMMAND…: run COMMAND (whose stdout is JSON) into $work/NAME.json, unless that
# file exists; a failed stage leaves no JSON behind.
stage() {
  local json=$work/$1.json
  shift
  if [[ -f $json ]]; then
    echo "pipeline: $json exists, skipping: $*" >&2
    return
  fi
  echo "pipeline: $*" >&2
  "$@" > "$json.tmp" || { rm -f "$json.tmp"; return 1; }
  mv "$json.tmp" "$json"
}

stage prepare ctfa prepare synthetic --out "$work/data" --scenes "${CTFA_SCENES:-8}" \
  --size "${CTFA_SIZE:-640}" --json
echo "pipeline: chips $(jq -c .chips "$work/prepare.json")" >&2

# Training overrides as --set options; `read` splits on blanks without expanding globs such as
# cam_scales=[1.0].
read -r -a extra <<< "${CTFA_SET:-}"
overrides=()
[[ -n ${CTFA_ITERS:-} ]] && overrides+=(--set "max_iters=$CTFA_ITERS")
for item in ${extra[@]+"${extra[@]}"}; do overrides+=(--set "$item"); done
if [[ -f $work/run/checkpoints/last.pt ]]; then
  # an earlier run stopped before writing train.json: continue it with its own config
  stage train ctfa train --data "$work/data" --out "$work/run" --resume --device "$device"
else
  stage train ctfa train --data "$work/data" --out "$work/run" --preset cpu \
    ${overrides[@]+"${overrides[@]}"} --device "$device"
fi
model=$(jq -r '.best_checkpoint // .last_checkpoint' "$work/train.json")
echo "pipeline: $(jq -r .step "$work/train.json") steps, model $model" >&2

stage evaluate ctfa evaluate --model "$model" --data "$work/data" --split test \
  --out "$work/evaluate" --overwrite --device "$device" --json

# The gate. An undefined mIoU (null) fails it.
jq -c --argjson min "$min_miou" \
  '{miou: .metrics.miou, min_miou: $min, pass: (.metrics.miou != null and .metrics.miou >= $min),
    model: .model}' "$work/evaluate.json"
if jq -e --argjson min "$min_miou" '.metrics.miou != null and .metrics.miou >= $min' \
    "$work/evaluate.json" > /dev/null; then
  echo "pipeline: test mIoU $(jq .metrics.miou "$work/evaluate.json") >= $min_miou: pass" >&2
else
  echo "pipeline: test mIoU $(jq .metrics.miou "$work/evaluate.json") is below $min_miou: fail" >&2
  exit 1
fi
