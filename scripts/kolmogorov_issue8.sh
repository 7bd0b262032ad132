#!/usr/bin/env bash
# Issue 8, Kolmogorov flow (SDA's setup): MASF, SF and SDA against LETKF (and `free`, the
# free-running ensemble, as a reference) at measurement gaps of
# 5 and 25 model steps (1 and 5 time units), seeds SEEDS (1..5). The truth of each seed is
# simulated once on 256² (configs/kolmogorov_issue8_truth.toml, 200 coarsened states) and
# replayed by every method (experiment.truth_file); the members run the 64² model. Prints the
# time-mean analysis RMSE and spread of the vorticity, mean ± std over seeds.
# Needs the SDA window network and the climatology (configs/train_sda_kolmogorov.toml,
# configs/sda_kolmogorov_data.toml: made here if missing, ~40 min on 2 cores). MASF's and SF's
# prior U-Nets are pre-trained by their first run and reused (filter.prior_weights).
# On one CPU core a cycle costs ~1 s (LETKF), ~30 s (MASF, SF), ~4 min (SDA, gap 5) and ~45 min
# (SDA, gap 25: 22 windows per trajectory); docs/results.md ran SDA with 2 cycles per seed
# (SDA uses no forecast, so its cycles do not depend on each other) and at gap 25 with 4 members.
#   scripts/kolmogorov_issue8.sh  # GENDA=..., SEEDS, GAPS="5 25", METHODS="letkf masf sf sda",
#     CYCLES_5=16 BURN_5=4 CYCLES_25=8 BURN_25=2 (cycles and burn-in per gap; the truth files
#     hold 200 states, enough for 40 cycles at gap 5), RAW_FROM=files (summarise earlier output)
set -euo pipefail
cd "$(dirname "$0")/.."
GENDA=${GENDA:-target/release/genda}
SEEDS=${SEEDS:-"1 2 3 4 5"}
GAPS=${GAPS:-"5 25"}
METHODS=${METHODS:-"letkf masf sf sda"}
CYCLES_5=${CYCLES_5:-16}
BURN_5=${BURN_5:-4}
CYCLES_25=${CYCLES_25:-8}
BURN_25=${BURN_25:-2}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p output
needs() { # the inputs of method $1
  case $1 in
    masf|sf|sda) [ -f output/sda_kolmogorov_data.truth.h5 ] || "$GENDA" truth configs/sda_kolmogorov_data.toml >&2 ;;
  esac
  if [ "$1" = sda ] && [ ! -f output/sda_kolmogorov_k2.h5 ]; then
    "$GENDA" train configs/train_sda_kolmogorov.toml >&2
  fi
}
truth_of() { # seed -> truth file
  local f=output/kolmogorov_issue8_truth_s$1.h5
  if [ ! -f "$f" ]; then
    sed "s/^seed = 1$/seed = $1/" configs/kolmogorov_issue8_truth.toml > "$tmp/truth$1.toml"
    "$GENDA" truth "$tmp/truth$1.toml" -o "${f%.h5}.nc" >&2
  fi
  echo "$f"
}
variant() { # method gap seed -> config
  local m=$1 base=$1
  [ "$m" = sf ] && base=masf
  [ "$m" = free ] && base=letkf
  sed -e "s/^obs_every = 5 .*/obs_every = $2/" \
      -e "s#^truth_file = .*#truth_file = \"$(truth_of "$3")\"#" \
      configs/kolmogorov_issue8_$base.toml |
  if [ "$m" = sf ]; then
    sed -e 's/^method = "masf"/method = "sf"/' -e 's/^sampler = "bridge".*/process = "vp"/' -e 's#kolmogorov_issue8_masf_prior.h5#kolmogorov_issue8_sf_prior.h5#'
  elif [ "$m" = free ]; then  # the free-running ensemble: no assimilation (a reference)
    sed -e 's/^method = "letkf"/method = "none"/' -e '/^inflation\|^localization_radius\|^geometry/d'
  else cat; fi
}
if [ -n "${RAW_FROM:-}" ]; then
  grep -hv '^|' $RAW_FROM | grep -v '^\s*$'
else
for g in $GAPS; do
  c=$CYCLES_5; b=$BURN_5
  if [ "$g" = 25 ]; then c=$CYCLES_25; b=$BURN_25; fi
  for m in $METHODS; do
    needs "$m"
    for s in $SEEDS; do
      variant "$m" "$g" "$s" > "$tmp/$m-$g-$s.toml"
      t0=$(date +%s)
      if out=$("$GENDA" run "$tmp/$m-$g-$s.toml" --seed "$s" --cycles "$c" --burn-in "$b" --no-output --quiet 2>&1); then
        echo "$out" | awk -v g=$g -v m=$m -v s=$s -v w=$(( $(date +%s) - t0 )) \
          '$1=="analysis" && NF==3 {print "gap", g, m, "seed", s, "rmse", $2, "spread", $3, "wall", w}'
      else
        echo "gap $g $m seed $s FAILED $(echo "$out" | tail -1 | tr -s ' \n' ' ')"
      fi
    done
  done
done
fi | tee "$tmp/all.txt"
python3 - "$tmp/all.txt" <<'PY'
import sys, statistics as st
rows, failed = {}, {}
for line in open(sys.argv[1]):
    f = line.split()
    if len(f) == 11 and f[5] == "rmse":
        rows.setdefault((int(f[1]), f[2]), []).append((float(f[6]), float(f[8]), float(f[10])))
    elif "FAILED" in f:
        failed[(int(f[1]), f[2])] = failed.get((int(f[1]), f[2]), 0) + 1
print("| gap | method | analysis RMSE | spread | seeds | failed | wall per run [s] |")
print("|---|---|---|---|---|---|---|")
for (g, m) in sorted(set(rows) | set(failed)):
    v = rows.get((g, m), [])
    r = [a for a, _, _ in v]
    mean = f"{st.mean(r):.3f} ± {st.stdev(r) if len(r) > 1 else 0.0:.3f}" if r else "—"
    sp = f"{st.mean([b for _, b, _ in v]):.3f}" if v else "—"
    w = f"{st.mean([c for _, _, c in v]):.0f}" if v else "—"
    print(f"| {g} | {m} | {mean} | {sp} | {len(r)} | {failed.get((g, m), 0)} | {w} |")
PY
