#!/usr/bin/env bash
# Cost growth of the LETKF and EnSF analyses (issue 22, item 4): analysis time per cycle against
# the state size n (10^4 … 10^7, on 1 and 2 ranks) and against the ensemble size N (10 … 100,
# n = 10^5, 1 rank), from `genda bench --cycle`; writes a CSV (method, ranks, n, members,
# analysis_s) and, with `genda plot`, its PNG (log–log, with the fitted exponents).
#   scripts/cost_growth.sh [OUT_DIR]       (default docs/data; ~35 min on the 2-core machine)
# GENDA_COST_MAX_N caps n (e.g. 1000000 for a quick run). The LETKF holds ~2.2 GB per 10^6
# variables (max RSS measured at 10^6, docs/scaling.md), so its 10^7 point needs ~22 GB and is
# left out below 32 GB of memory; EnSF needs ~1.6 GB per 10^6.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-docs/data}
G=${GENDA:-./target/release/genda}
MAXN=${GENDA_COST_MAX_N:-10000000}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
mkdir -p "$OUT"
csv="$OUT/cost_growth.csv"
tmp="$csv.tmp"
# A run that stopped part-way resumes: points already in the temporary file are kept.
[ -s "$tmp" ] || echo "method,ranks,n,members,analysis_s" > "$tmp"

# One point: method config ranks n members.
point() {
  local method=$1 cfg=$2 ranks=$3 n=$4 members=$5
  if grep -q "^$method,$ranks,$n,$members," "$tmp"; then
    grep "^$method,$ranks,$n,$members," "$tmp"
    return
  fi
  local cycles=2
  [ "$n" -ge 1000000 ] && cycles=1
  local args=(bench "$cfg" --cycle --cycles "$cycles" --set "model.dim=$n" --set "filter.members=$members"
              --set experiment.spinup_steps=0)
  local line
  if [ "$ranks" = 1 ]; then
    line=$("$G" "${args[@]}" 2>/dev/null | grep 'per cycle \[µs\]')
  else
    line=$(mpirun --oversubscribe -np "$ranks" "$G" "${args[@]}" --set "parallel.domains=$ranks" 2>/dev/null | grep 'per cycle \[µs\]')
  fi
  local us
  us=$(sed -E 's/.*analysis ([0-9.]+),.*/\1/' <<<"$line")
  local s
  s=$(awk -v u="$us" 'BEGIN { printf "%.6g", u / 1e6 }')
  echo "$method,$ranks,$n,$members,$s" | tee -a "$tmp"
}

mem_gb=$(awk '/MemTotal/ { printf "%d", $2 / 1048576 }' /proc/meminfo)
for ranks in 1 2; do
  for n in 10000 100000 1000000 10000000; do
    [ "$n" -gt "$MAXN" ] && continue
    if [ "$n" -lt 10000000 ] || [ "$mem_gb" -ge 32 ]; then
      point letkf configs/l96_1m_letkf.toml "$ranks" "$n" 20
    fi
    point ensf configs/l96_1m_ensf.toml "$ranks" "$n" 20
  done
done
for members in 10 50 100; do
  point letkf configs/l96_1m_letkf.toml 1 100000 "$members"
  point ensf configs/l96_1m_ensf.toml 1 100000 "$members"
done
mv "$tmp" "$csv"
"$G" plot "$csv" -o "$OUT/cost_growth.png"
echo "wrote $csv and $OUT/cost_growth.png"
