#!/usr/bin/env bash
# Issue 21 item 3: the MASF code's Kolmogorov case at 64² (configs/masf/kolmogorov_reference*.toml:
# perfect model, velocity state, 10 members, u and v observed at every 5th grid point with
# sigma 0.1 at steps 50, 60, ..., 100) for MASF and SF as their code, and the code's EnKF and
# LETKF on the same truth (each seed's truth and members are the same draws for every method),
# seeds SEEDS (1..5). Prints per run the reference's pooled RMSE (rmse_path: the ensemble mean
# over the 51 states of steps 50..100) and genda's analysis RMSE and spread (6 analyses), then
# mean ± std over seeds; a run that fails or gives a non-finite RMSE is counted as diverged.
# The pre-training set (1000 independent step-50 states) is written first if missing; MASF's
# and SF's networks are pre-trained by their first run and reused (filter.prior_weights).
#   scripts/masf_kolmogorov_reference.sh  # GENDA=..., SEEDS, METHODS="free enkf letkf letkf_r5 masf sf"
#     (free: no assimilation; letkf_r5: radius 5 grid points, the reference's number, twice its physical radius at 64²),
#     JOBS=2 (runs at once: the networks train on one thread each), OUT=output/masf_ref (a run
#     whose file and log are there is kept), PYTHON (with h5py: the venv of scripts/setup.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
GENDA=${GENDA:-target/release/genda}
SEEDS=${SEEDS:-"1 2 3 4 5"}
METHODS=${METHODS:-"free enkf letkf letkf_r5 masf sf"}
JOBS=${JOBS:-2}
OUT=${OUT:-output/masf_ref}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$OUT"
[ -f output/masf_kolmogorov_reference_samples.truth.h5 ] ||
  "$GENDA" truth configs/masf/kolmogorov_reference_samples.toml >&2
config_of() { case $1 in masf) echo configs/masf/kolmogorov_reference.toml ;;
  letkf_r5) echo configs/masf/kolmogorov_reference_letkf.toml ;;
  *) echo "configs/masf/kolmogorov_reference_$1.toml" ;; esac; }
extra_of() { # letkf_r5: the reference's radius in grid points (5) instead of its scale at 64² (2.5)
  [ "$1" = letkf_r5 ] && echo "--set filter.localization_radius=5" || true; }
run_one() { # method seed: writes $OUT/<method>.seed<seed>.{nc,log} (kept if already done)
  local m=$1 s=$2 t0
  if [ -f "$OUT/$m.seed$s.nc" ] && grep -q '^wall ' "$OUT/$m.seed$s.log" 2>/dev/null; then return; fi
  t0=$(date +%s)
  # shellcheck disable=SC2046
  if "$GENDA" run "$(config_of "$m")" $(extra_of "$m") --seed "$s" -o "$OUT/$m.seed$s.nc" --quiet \
      > "$OUT/$m.seed$s.log" 2>&1; then
    echo "wall $(( $(date +%s) - t0 ))" >> "$OUT/$m.seed$s.log"
  else
    echo "FAILED" >> "$OUT/$m.seed$s.log"
  fi
}
export -f run_one config_of extra_of
export GENDA OUT
# The first seed of each network method alone (it pre-trains the shared network), then the rest.
for m in $METHODS; do echo "$m ${SEEDS%% *}"; done | xargs -P "$JOBS" -n 2 bash -c 'run_one "$0" "$1"'
for m in $METHODS; do for s in ${SEEDS#* }; do echo "$m $s"; done; done |
  xargs -P "$JOBS" -n 2 bash -c 'run_one "$0" "$1"'
"${PYTHON:-$HOME/.cache/genda/venv/bin/python}" - "$OUT" $METHODS -- $SEEDS <<'PY'
import math, re, statistics as st, sys
import h5py
import numpy as np
out, rest = sys.argv[1], sys.argv[2:]
methods, seeds = rest[:rest.index("--")], rest[rest.index("--") + 1:]
print("| method | rmse_path (51 states) | analysis RMSE | analysis spread | seeds | diverged | wall per run [s] |")
print("|---|---|---|---|---|---|---|")
for m in methods:
    path, ana, spr, wall, bad = [], [], [], [], 0
    for s in seeds:
        log = open(f"{out}/{m}.seed{s}.log").read()
        if "FAILED" in log:
            bad += 1
            continue
        with h5py.File(f"{out}/{m}.seed{s}.nc", "r") as f:
            attr = lambda k: float(np.asarray(f.attrs[k]).ravel()[0])
            p, a, sp = attr("rmse_path"), attr("rmse_analysis_time_mean"), attr("spread_analysis_time_mean")
        if not all(map(math.isfinite, (p, a, sp))):
            bad += 1
            continue
        print(f"{m} seed {s}: rmse_path {p:.4f} analysis {a:.4f} spread {sp:.4f}", file=sys.stderr)
        path.append(p); ana.append(a); spr.append(sp)
        wall.append(float(re.search(r"wall (\d+)", log).group(1)))
    ms = lambda v: f"{st.mean(v):.4f} ± {st.stdev(v):.4f}" if len(v) > 1 else (f"{v[0]:.4f}" if v else "—")
    w = f"{st.mean(wall):.0f}" if wall else "—"
    print(f"| {m} | {ms(path)} | {ms(ana)} | {ms(spr)} | {len(path)} | {bad} | {w} |")
PY
