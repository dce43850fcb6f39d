#!/usr/bin/env bash
# The ablation of the paper's table on any DATA_DIR: the full CTFA model, the model without the
# CTC term (w_ctc=0), without the foreground branch (w_joint=0) and without both, each trained
# with every seed and scored with `ctfa evaluate`; prints a Markdown table of the mIoU (one value
# per seed, then the mean) on stdout.
#
# Usage: examples/ablation.sh DATA_DIR OUT_DIR [SEED ...]      (default seeds: 0 1 2)
#
# Environment (all optional):
#   CTFA_PRESET     training preset                                    (default cpu)
#   CTFA_SET        overrides of every run, "key=value key=value …"    (e.g. "weights=deit.pth")
#   CTFA_SPLIT      split to score                                     (default test)
#   CTFA_EVAL_DATA  DATA_DIR to score, e.g. chips of unseen scenes     (default DATA_DIR)
#   CTFA_TARGETS    what to score, among seg cam aux_cam pseudo        (default all four)
#   CTFA_DEVICE     auto, cpu, cuda or cuda:N                          (default auto)
#
# Run <row>_s<seed> trains into OUT_DIR/<row>_s<seed>/ and writes its summary and scores to
# OUT_DIR/<row>_s<seed>.train.json and OUT_DIR/<row>_s<seed>.<set>.<target>.json, where <set>
# is the split, prefixed by the scored DATA_DIR's name when it is not DATA_DIR. A stage whose
# JSON exists is skipped and an interrupted training resumes, so a re-run continues where the
# last one stopped, more seeds can be added later, and another CTFA_EVAL_DATA or CTFA_SPLIT
# scores the same runs again without training them.
#
# stdout: the table; progress and logs on stderr.
set -euo pipefail

if [[ $# -lt 2 ]]; then
  echo "usage: $0 DATA_DIR OUT_DIR [SEED ...]" >&2
  exit 2
fi
data=$1
out=$2
shift 2
seeds=("$@")
[[ ${#seeds[@]} -gt 0 ]] || seeds=(0 1 2)
for seed in "${seeds[@]}"; do
  if ! [[ $seed =~ ^[0-9]+$ ]]; then
    echo "usage: $0 DATA_DIR OUT_DIR [SEED ...]: seed '$seed' is not a non-negative integer" >&2
    exit 2
  fi
done
read -r -a targets <<< "${CTFA_TARGETS:-seg cam aux_cam pseudo}"
if [[ ${#targets[@]} -eq 0 ]]; then
  echo "$0: CTFA_TARGETS is empty; name at least one of seg, cam, aux_cam, pseudo" >&2
  exit 2
fi
for target in "${targets[@]}"; do
  case $target in
    seg | cam | aux_cam | pseudo) ;;
    *) echo "$0: CTFA_TARGETS: unknown target '$target'; use seg, cam, aux_cam or pseudo" >&2
       exit 2 ;;
  esac
done
split=${CTFA_SPLIT:-test}
eval_data=${CTFA_EVAL_DATA:-$data}
scored=$split
[[ $eval_data == "$data" ]] || scored=$(basename "$eval_data")_$split
device=${CTFA_DEVICE:-auto}
mkdir -p "$out"

# The rows of the table, each with its label and the overrides that ablate (case statements
# rather than associative arrays, which macOS's bash 3.2 lacks).
rows=(full no_ctc no_fg no_both)
label() {
  case $1 in
    full) echo "CTFA (CTC + foreground branch)" ;;
    no_ctc) echo "without CTC" ;;
    no_fg) echo "without the foreground branch" ;;
    no_both) echo "without both" ;;
  esac
}
ablate() {
  case $1 in
    no_ctc) echo "w_ctc=0" ;;
    no_fg) echo "w_joint=0" ;;
    no_both) echo "w_ctc=0 w_joint=0" ;;
  esac
}
heading() {
  case $1 in
    seg) echo "seg" ;;
    cam) echo "CAM" ;;
    aux_cam) echo "aux-CAM" ;;
    pseudo) echo "pseudo label" ;;
  esac
}

# stage JSON COMMAND…: run COMMAND (whose stdout is JSON) into JSON unless that file exists; a
# failed stage leaves no JSON behind.
stage() {
  local json=$1
  shift
  if [[ -f $json ]]; then
    echo "ablation: $json exists, skipping" >&2
    return
  fi
  echo "ablation: $*" >&2
  "$@" > "$json.tmp" || { rm -f "$json.tmp"; return 1; }
  mv "$json.tmp" "$json"
}

for seed in "${seeds[@]}"; do
  for row in "${rows[@]}"; do
    run=$out/${row}_s$seed
    if [[ -f $run/checkpoints/last.pt ]]; then  # cut off before its summary: continue it
      stage "$run.train.json" ctfa train --data "$data" --out "$run" --resume --device "$device"
    else
      # `read` splits on blanks without expanding globs such as cam_scales=[1.0].
      read -r -a items <<< "${CTFA_SET:-} seed=$seed $(ablate "$row")"
      overrides=()
      for item in "${items[@]}"; do overrides+=(--set "$item"); done
      stage "$run.train.json" ctfa train --data "$data" --out "$run" \
        --preset "${CTFA_PRESET:-cpu}" "${overrides[@]}" --device "$device"
    fi
    for target in "${targets[@]}"; do
      stage "$run.$scored.$target.json" ctfa evaluate --model "$run/checkpoints/last.pt" \
        --data "$eval_data" --split "$split" --target "$target" --out "$run/eval_${scored}_$target" \
        --overwrite --device "$device" --json
    done
  done
done

# The table: per seed, then the mean over the seeds with a defined mIoU.
header="| model |"
rule="| --- |"
for target in "${targets[@]}"; do
  header+=" $(heading "$target") |"
  rule+=" --- |"
done
echo "$header"
echo "$rule"
for row in "${rows[@]}"; do
  line="| $(label "$row") |"
  for target in "${targets[@]}"; do
    values=()
    for seed in "${seeds[@]}"; do
      values+=("$(jq -r '.metrics.miou // "nan"' "$out/${row}_s$seed.$scored.$target.json")")
    done
    line+=" $(printf '%s\n' "${values[@]}" | awk '
      $1 != "nan" { sum += $1; n += 1 }
      { cells = cells (NR > 1 ? " / " : "") ($1 == "nan" ? "n/a" : sprintf("%.3f", $1)) }
      END { printf "%s · %s", cells, (n ? sprintf("%.3f", sum / n) : "n/a") }') |"
  done
  echo "$line"
done
echo "ablation: mIoU on the $split split of $eval_data, seeds ${seeds[*]}; runs in $out" >&2
