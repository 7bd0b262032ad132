#!/usr/bin/env bash
# Method comparison on L63 with arctan observations (issue 7): KDE conditional diffusion vs
# stochastic EnKF, ETKF and the bootstrap particle filter (with and without regularisation) for
# N = 10, 20, 50 over seeds 1..3; prints a markdown table of mean ± std of the time-averaged
# analysis RMSE. Usage: scripts/compare_nonlinear_l63.sh [genda binary] [base config]
set -euo pipefail
GENDA=${1:-target/release/genda}
BASE=${2:-configs/l63_arctan_kde.toml}
SEEDS=${SEEDS:-"1 2 3"}
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
head_cfg() { sed '/^\[filter\]/,$d' "$BASE"; }
declare -A FILTERS=(
  [kde_diffusion]=$'method = "kde_diffusion"\nsteps = 100\neps_alpha = 0.05\nbandwidth = "fixed"\nstate_scale = 0.5\nobs_scale = 0.15'
  [enkf]=$'method = "enkf"\ninflation = 1.04'
  [etkf]=$'method = "etkf"\ninflation = 1.02\nrotation = true'
  [pf]=$'method = "pf"\nregularization = 0.0'
  [pf_reg]=$'method = "pf"\nregularization = 1.0'
)
echo "| method | N=10 | N=20 | N=50 |"
echo "|---|---|---|---|"
for m in kde_diffusion enkf etkf pf pf_reg; do
  row="| $m |"
  for n in 10 20 50; do
    cfg="$tmp/$m.toml"
    { head_cfg; echo "[filter]"; echo "${FILTERS[$m]}"; echo "members = $n"; } > "$cfg"
    vals=()
    for s in $SEEDS; do
      v=$("$GENDA" run "$cfg" --seed "$s" --no-output --quiet 2>/dev/null | awk '/^analysis /{print $2; exit}')
      vals+=("${v:-nan}")
    done
    row+=" $(printf '%s\n' "${vals[@]}" | awk '{x[NR]=$1; s+=$1} END {m=s/NR; for(i=1;i<=NR;i++) v+=(x[i]-m)^2; printf "%.3f ± %.3f", m, sqrt(v/(NR>1?NR-1:1))}') |"
  done
  echo "$row"
done
