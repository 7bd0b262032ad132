#!/usr/bin/env bash
# Ω vs its conditional-Gaussian mixture baseline alone vs EnKF vs EnSF on the two conditionally
# Gaussian models, seeds 1..3 (SEEDS to change), same truth/observations per seed. Prints the
# hidden-variable scores (RMSE, spread, CRPS, skewness/kurtosis errors) as mean ± std.
#   scripts/compare_omega_cg.sh            # GENDA=path/to/genda to use another binary
set -euo pipefail
cd "$(dirname "$0")/.."
GENDA=${GENDA:-target/release/genda}
SEEDS=${SEEDS:-"1 2 3"}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
filter_block() { # $1 method variant
  case $1 in
    omega) cat ;;
    omega_baseline) sed 's/^method = "omega"/method = "omega"\nbaseline_only = true/' ;;
    enkf | ensf) python3 -c '
import sys, re
s = sys.stdin.read()
a = s.index("[filter]"); b = s.index("[output]")
sys.stdout.write(s[:a] + "[filter]\nmethod = \"'"$1"'\"\nmembers = 50\n\n" + s[b:])' ;;
  esac
}
for cfg in configs/omega_spekf.toml configs/omega_cg_lorenz96.toml; do
  for m in omega omega_baseline enkf ensf; do
    filter_block $m < "$cfg" > "$tmp/$m.toml"
    for s in $SEEDS; do
      out=$("$GENDA" run "$tmp/$m.toml" --seed "$s" --no-output --quiet 2>&1) || { echo "$out"; exit 1; }
      echo "$out" | grep "hidden variables" | sed "s|^|$(basename "$cfg" .toml) $m seed $s: |"
    done
  done
done | tee "$tmp/all.txt"
python3 - "$tmp/all.txt" <<'PY'
import re, sys, statistics as st
rows = {}
for line in open(sys.argv[1]):
    m = re.match(r"(\S+) (\S+) seed \d+: .*rmse.a ([\d.]+), spread.a ([\d.]+), crps.a ([\d.]+), \|skewness error\| ([\d.]+), \|kurtosis error\| ([\d.]+)", line)
    if m:
        rows.setdefault((m[1], m[2]), []).append([float(m[i]) for i in range(3, 8)])
print("| model | method | hidden RMSE | spread | CRPS | skewness err | kurtosis err |")
print("|---|---|---|---|---|---|---|")
for (cfg, meth), v in rows.items():
    cols = list(zip(*v))
    f = lambda c: f"{st.mean(c):.3f} ± {st.stdev(c) if len(c) > 1 else 0:.3f}"
    print(f"| {cfg} | {meth} | " + " | ".join(f(c) for c in cols) + " |")
PY
