#!/usr/bin/env bash
# DAISI vs LETKF vs EnSF (and the free-running ensemble) on Lorenz-96 (n = 40, F = 8, dt = 0.05,
# 20 members, 1200 cycles, burn-in 200) with (a) every 4th variable observed, R = 1, and (b)
# arctan of every 4th variable, R = 0.01; seeds 1..3. Prints a markdown table of mean ± std over
# seeds of the time-averaged analysis RMSE (and spread).
# Needs the DAISI prior first:
#   genda truth configs/daisi_l96_climatology.toml && genda train configs/train_l96_interpolant.toml
# Usage: scripts/compare_daisi_l96.sh [genda binary]   (SEEDS="1 2 3" CYCLES=1200 METHODS="daisi letkf ensf free" SETUPS="sparse arctan";
# a diverged run counts as nan)
set -euo pipefail
GENDA=${1:-target/release/genda}
SEEDS=${SEEDS:-"1 2 3"}
CYCLES=${CYCLES:-1200}
export RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-1} OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # one libtorch thread: no spin-waiting on a shared machine
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
# mean ± std over the finite values; diverged runs (nan) are counted and left out.
stats() { awk '$1=="nan"{d++; next} {k++; x[k]=$1; s+=$1} END {if(k==0){printf "all diverged"; exit} m=s/k; for(i=1;i<=k;i++) v+=(x[i]-m)^2; printf "%.3f ± %.3f", m, sqrt(v/(k>1?k-1:1)); if(d) printf " (%d diverged)", d}'; }
echo "| setup | method | analysis RMSE | analysis spread | per seed |"
echo "|---|---|---|---|---|"
for setup in ${SETUPS:-sparse arctan}; do
  # Free run: the LETKF config with the filter replaced by no assimilation.
  sed '/^\[filter\]/,/^\[output\]/{/^\[output\]/!d}' configs/l96_${setup}_letkf.toml |
    sed 's/^\[output\]/[filter]\nmethod = "none"\nmembers = 20\n\n[output]/' > "$tmp/free_$setup.toml"
  for method in ${METHODS:-daisi letkf ensf free}; do
    case $method in
      daisi) cfg=configs/daisi_l96_$setup.toml ;;
      free) cfg=$tmp/free_$setup.toml ;;
      *) cfg=configs/l96_${setup}_$method.toml ;;
    esac
    rm -f "$tmp/r" "$tmp/s"; per=""
    for s in $SEEDS; do
      line=$("$GENDA" run "$cfg" --seed "$s" --cycles "$CYCLES" --no-output --quiet 2>&1 |
        awk '/^analysis /{print $2, $3; exit} /error/{print "nan nan"; exit}' || true)
      line=${line:-"nan nan"}
      echo "${line% *}" >> "$tmp/r"; echo "${line#* }" >> "$tmp/s"; per+="${line% *} "
    done
    echo "| $setup | $method | $(stats < "$tmp/r") | $(stats < "$tmp/s") | $per|"
  done
done
