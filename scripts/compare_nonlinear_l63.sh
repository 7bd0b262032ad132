#!/usr/bin/env bash
# Cycled comparison on L63 with arctan observations in DAPPER's terms (configs/dapper/l63_arctan_*:
# y = arctan(x) + N(0, 0.1^2) every 0.1, 700 analyses, burn-in 16 time units, X0 as sakov2012):
# KDE conditional diffusion (SDE, and the 10-step probability-flow ODE from the exact t = 1
# marginal) against the stochastic EnKF,
# the ETKF and DAPPER's PartFilt(reg=2.4, NER=0.3), for N = 10, 25, 50, 100, 250 over seeds
# 1..5; a markdown table of mean ± std of the time-averaged analysis RMSE, diverged runs
# (non-zero exit or non-finite) counted separately. KDE keeps its issue-7 fixed bandwidths.
# Usage: scripts/compare_nonlinear_l63.sh [genda binary] [base config]   (SEEDS, SIZES, METHODS, RAW)
set -euo pipefail
GENDA=${1:-target/release/genda}
BASE=${2:-configs/dapper/l63_arctan_enkf.toml}
SEEDS=${SEEDS:-"1 2 3 4 5"}
SIZES=${SIZES:-"10 25 50 100 250"}
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
head_cfg() { sed '/^\[filter\]/,$d' "$BASE"; }
declare -A FILTERS=(
  [kde_diffusion]=$'method = "kde_diffusion"\nsteps = 100\neps_alpha = 0.05\nbandwidth = "fixed"\nstate_scale = 0.5\nobs_scale = 0.15'
  [kde_ode10]=$'method = "kde_diffusion"\nsteps = 10\neps_alpha = 0.05\nbandwidth = "fixed"\nstate_scale = 0.5\nobs_scale = 0.15\nsampler = "probability_flow"\nterminal = "mixture"'
  [enkf]=$'method = "enkf"\ninflation = 1.02'
  [etkf]=$'method = "etkf"\ninflation = 1.02\nrotation = true'
  [pf]=$'method = "pf"\nregularization = 2.4\nner = 0.3'
)
hdr="| method |"; sep="|---|"
for n in $SIZES; do hdr+=" N=$n |"; sep+="---|"; done
echo "$hdr"; echo "$sep"
for m in ${METHODS:-kde_diffusion kde_ode10 enkf etkf pf}; do
  row="| $m |"
  for n in $SIZES; do
    cfg="$tmp/$m.toml"
    { head_cfg; echo "[filter]"; echo "${FILTERS[$m]}"; echo "members = $n"; } > "$cfg"
    vals=(); div=0
    for s in $SEEDS; do
      v=$("$GENDA" run "$cfg" --seed "$s" --no-output --quiet 2>/dev/null | awk '/^analysis /{print $2; exit}') || true
      if [[ -z "$v" || "$v" == "NaN" || "$v" == "nan" || "$v" == "inf" ]]; then div=$((div + 1)); else vals+=("$v"); fi
      [[ -n "${RAW:-}" ]] && echo "$m N=$n seed=$s rmse.a=${v:-diverged}" >> "$RAW"
    done
    if [[ ${#vals[@]} -gt 0 ]]; then
      cell=$(printf '%s\n' "${vals[@]}" | awk '{x[NR]=$1; s+=$1} END {m=s/NR; for(i=1;i<=NR;i++) v+=(x[i]-m)^2; printf "%.3f ± %.3f", m, sqrt(v/(NR>1?NR-1:1))}')
    else
      cell="–"
    fi
    [[ $div -gt 0 ]] && cell+=" ($div diverged)"
    row+=" $cell |"
  done
  echo "$row"
done
