#!/usr/bin/env bash
# Report of the HalfCheetah preset runs with tailored exploration (runs/explore_hc_s0, _s1, made by
# scripts/train.py --preset scripts/configs/halfcheetah_mbmpo.yaml --seed S --threads 1 --out runs/explore_hc_sS)
# beside the committed preset runs of seeds 0-1 that predate it (real data from model 0's adapted
# policies only: the reruns after the baseline-solve fix, mbmpo_model0, and the older runs with the
# lstsq baseline, mbmpo_model0_lstsq) and the tuned PPO's seeds 0-1, into
# benchmarks/results/mbmpo_exploration_hc/.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
BEFORE=benchmarks/results/compare_halfcheetah/runs/HalfCheetah-v5
rm -rf runs/explore_report
$PY scripts/compare.py --no-train --envs HalfCheetah-v5 --seeds 0,1 --total-steps 100000 --out runs/explore_report \
  --include 'mbmpo_tailored:HalfCheetah-v5=runs/explore_hc_s*' \
            "mbmpo_model0:HalfCheetah-v5=benchmarks/results/mbmpo_repro/halfcheetah_preset_s[01]" \
            "mbmpo_model0_lstsq:HalfCheetah-v5=$BEFORE/mbmpo_prob_pen5_tvimag_fall5/s[01]" \
            "ppo_tuned:HalfCheetah-v5=$BEFORE/ppo_tuned/s[01]" \
  --reference ppo_tuned --budgets 20k 50k 100k --thresholds 3000
$PY scripts/plot.py runs/explore_report --export benchmarks/results/mbmpo_exploration_hc
for s in 0 1; do  # provenance: the commit each run started from
  cp "runs/explore_hc_s$s/environment.yaml" "benchmarks/results/mbmpo_exploration_hc/runs/HalfCheetah-v5/mbmpo_tailored/s$s/"
done
