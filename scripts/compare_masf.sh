#!/usr/bin/env bash
# MASF vs SF vs stochastic EnKF vs SDA on Lorenz-63 with a 100-step measurement gap (dt = 0.01),
# observing all components or x only, seeds 1..5 (SEEDS to change). MASF runs with both
# samplers: "bridge" (genda's default, exact reversal) and "additive" (the paper's).
# Prints the time-mean analysis RMSE as mean ± std over seeds.
# SDA needs its window network (configs/train_sda_l63_gap100.toml; trained here if missing).
#   scripts/compare_masf.sh   # GENDA=path/to/genda, CYCLES=200, BURN_IN=40, METHODS="masf sda" to change
set -euo pipefail
cd "$(dirname "$0")/.."
GENDA=${GENDA:-target/release/genda}
SEEDS=${SEEDS:-"1 2 3 4 5"}
METHODS=${METHODS:-"masf masf_additive sf enkf sda"}
CYCLES=${CYCLES:-200}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
base=configs/masf_l63_gap100.toml
variant() { # $1 method, $2 obs (all|x)
  local s
  s=$(cat "$base")
  case $1 in
    masf) ;;
    masf_additive) s=$(echo "$s" | sed 's/^method = "masf"/method = "masf"\nguidance = "additive"/') ;;
    sf) s=$(echo "$s" | sed 's/^method = "masf"/method = "sf"/') ;;
    sda) s=$(cat configs/sda_l63_gap100.toml) ;;
    enkf) s=$(echo "$s" | sed -e 's/^method = "masf"/method = "enkf"/' -e '/^steps\|^hidden\|^layers\|^lr\|^batch\|^pretrain\|^train_steps/d') ;;
  esac
  if [ "$2" = x ]; then s=$(echo "$s" | sed 's/^operator = "identity"/operator = "sparse"\nstride = 3/'); fi
  echo "$s"
}
if [ -n "${RAW_FROM:-}" ]; then
  # Summarise earlier runs (e.g. the per-seed outputs of jobs/issue8_sweep.sbatch).
  grep -hv '^|' $RAW_FROM | grep -v '^\s*$'
else
for obs in all x; do
  for m in $METHODS; do
    if [ "$m" = sda ] && [ ! -f output/sda_l63_gap100_k4.h5 ]; then
      [ -f output/sda_l63_gap100_data.truth.h5 ] || "$GENDA" truth configs/sda_l63_gap100_data.toml >&2
      "$GENDA" train configs/train_sda_l63_gap100.toml >&2
    fi
    variant $m $obs > "$tmp/$m-$obs.toml"
    for s in $SEEDS; do
      out=$("$GENDA" run "$tmp/$m-$obs.toml" --seed "$s" --cycles "$CYCLES" --burn-in "${BURN_IN:-40}" --no-output --quiet 2>&1) || { echo "$m $obs seed $s failed: $out"; continue; }
      echo "$out" | awk -v m=$m -v o=$obs -v s=$s '$1=="analysis" && NF==3 {print o, m, "seed", s, "rmse", $2, "spread", $3}'
    done
  done
done
fi | tee "$tmp/all.txt"
python3 - "$tmp/all.txt" <<'PY'
import sys, statistics as st
rows = {}
for line in open(sys.argv[1]):
    f = line.split()
    if len(f) == 8:
        rows.setdefault((f[0], f[1]), []).append((float(f[5]), float(f[7])))
print("| observed | method | analysis RMSE | spread | seeds |")
print("|---|---|---|---|---|")
for (o, m), v in rows.items():
    r = [a for a, _ in v]; sp = [b for _, b in v]
    sd = st.stdev(r) if len(r) > 1 else 0.0
    print(f"| {o} | {m} | {st.mean(r):.3f} ± {sd:.3f} | {st.mean(sp):.3f} | {len(r)} |")
PY
