#!/usr/bin/env bash
# Return of the HalfCheetah preset with bfloat16 model layers (imagined steps and fits) beside the
# float32 default, seeds 0-2 to 100k real steps, into benchmarks/results/mbmpo_precision_hc/.
# bfloat16 runs (one thread each, two side by side):
#   python scripts/train.py --preset scripts/configs/halfcheetah_mbmpo.yaml --seed S --threads 1 \
#     --out runs/bf16_hc_sS --imagined-precision bfloat16 --model-fit-precision bfloat16
# float32 runs: seeds 0 and 1 are the tailored-exploration runs committed in
# benchmarks/results/mbmpo_exploration_hc/ (commit 374fe01, whose seeded runs are identical to
# today's float32 ones: benchmarks/behaviour_identity.py); seed 2 is made the same way, without the
# two precision flags, into runs/fp32_hc_s2 (left out while it does not exist).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=benchmarks/results/mbmpo_precision_hc
F32=benchmarks/results/mbmpo_exploration_hc/runs/HalfCheetah-v5/mbmpo_tailored
SEEDS=$(for d in runs/bf16_hc_s*/; do d=${d%/}; echo "${d##*_s}"; done | sort -n | paste -sd, -)
INCLUDES=("mbmpo_float32:HalfCheetah-v5=$F32/s[01]" "mbmpo_bfloat16:HalfCheetah-v5=runs/bf16_hc_s[0-9]")
[ -d runs/fp32_hc_s2 ] && INCLUDES+=("mbmpo_float32:HalfCheetah-v5=runs/fp32_hc_s2")
rm -rf runs/precision_report
$PY scripts/compare.py --no-train --envs HalfCheetah-v5 --seeds "$SEEDS" --total-steps 100000 \
  --out runs/precision_report \
  --include "${INCLUDES[@]}" \
  --reference mbmpo_float32 --budgets 20k 50k 100k --thresholds 3000
$PY scripts/plot.py runs/precision_report --export "$OUT"
for d in runs/bf16_hc_s* runs/fp32_hc_s2; do  # provenance: the commit each run started from
  [ -d "$d" ] || continue
  s=${d##*_s}; label=$([[ $d == *bf16* ]] && echo mbmpo_bfloat16 || echo mbmpo_float32)
  cp "$d/environment.yaml" "$OUT/runs/HalfCheetah-v5/$label/s$s/"
done
