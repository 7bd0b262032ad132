#!/usr/bin/env bash
# MASF vs SF vs stochastic EnKF (and LETKF as a reference) on Lorenz-96 (issue 8 item 4):
# configs/masf_l96.toml (dt = 0.05, every 2nd variable observed, R = I, 20 members) over
#   dimension n in {40, 100, 400} at F = 8, gap 5;  F in {8, 12, 16} at n = 40, gap 5;
#   gap (obs_every) in {1, 5, 10} at n = 40, F = 8,
# seeds SEEDS (1..5). MASF and SF share the prior (Gaussian baseline + residual MLP), its
# training budget and the sampler; EnKF has the same inflation and no localisation; LETKF the
# same inflation and radius. Prints time-mean analysis RMSE and spread, mean ± std over seeds.
# A cell n:F:gap:cycles:dt overrides CYCLES and dt (0.05); a method m@f overrides the inflation (e.g. enkf@1.05).
#   scripts/sweep_masf_l96.sh   # GENDA=path/to/genda CYCLES=300 BURN_IN=50 CELLS="..." METHODS="..."
set -euo pipefail
cd "$(dirname "$0")/.."
GENDA=${GENDA:-target/release/genda}
SEEDS=${SEEDS:-"1 2 3 4 5"}
CYCLES=${CYCLES:-300}
BURN_IN=${BURN_IN:-50}
# cell = n:F:gap
CELLS=${CELLS:-"40:8:5 100:8:5 40:12:5 40:16:5 40:8:1 40:8:10 400:8:5:200"}
METHODS=${METHODS:-"masf sf enkf enkf@1.05 letkf"}
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
base=configs/masf_l96.toml
variant() { # $1 method[@inflation], $2 n, $3 F, $4 gap, $5 dt
  python3 - "$base" "$@" <<'PY'
import re, sys
path, method, n, forcing, gap, dt = sys.argv[1:]
s = open(path).read()
if "@" in method:
    method, infl = method.split("@")
    s = re.sub(r"^inflation = .*$", f"inflation = {float(infl)}", s, flags=re.M)
n = int(n)
m = re.search(r"^mean = \[(.*)\]$", s, re.M)
x = [v.strip() for v in m.group(1).split(",")]
x = (x * (n // len(x) + 1))[:n]          # the n = 40 attractor state, repeated
s = s.replace(m.group(0), "mean = [" + ", ".join(x) + "]")
s = re.sub(r"^dim = .*$", f"dim = {n}", s, flags=re.M)
s = re.sub(r"^forcing = .*$", f"forcing = {float(forcing)}", s, flags=re.M)
s = re.sub(r"^obs_every = .*$", f"obs_every = {gap}", s, flags=re.M)
s = re.sub(r"^dt = .*$", f"dt = {float(dt)}", s, flags=re.M)
s = re.sub(r'^method = "masf"', f'method = "{method}"', s, flags=re.M)
keep = {"masf": None, "sf": None, "enkf": ("method", "members", "inflation"),
        "letkf": ("method", "members", "inflation", "localization_radius")}[method]
if keep:
    head, filt = s.split("[filter]\n")
    filt, tail = filt.split("\n[output]")
    filt = "\n".join(l for l in filt.split("\n") if l.split(" = ")[0] in keep)
    s = head + "[filter]\n" + filt + "\n\n[output]" + tail
print(s)
PY
}
if [ -n "${RAW_FROM:-}" ]; then
  # Summarise earlier runs (e.g. the per-seed outputs of jobs/issue8_sweep.sbatch).
  grep -hv '^|' $RAW_FROM | grep -v '^\s*$'
else
for cell in $CELLS; do
  IFS=: read -r n f g c dt <<< "$cell"
  c=${c:-$CYCLES}
  dt=${dt:-0.05}
  key=$n:$f:$g
  if [ "$dt" != 0.05 ]; then key=$key:dt$dt; fi
  for m in $METHODS; do
    cfg="$OUT/$m-$n-$f-$g-$dt.toml"
    variant "$m" "$n" "$f" "$g" "$dt" > "$cfg"
    for s in $SEEDS; do
      t0=$(date +%s)
      if out=$("$GENDA" run "$cfg" --seed "$s" --cycles "$c" --burn-in "$BURN_IN" --no-output --quiet 2>&1); then
        echo "$out" | awk -v c="$key" -v m="$m" -v s="$s" -v w=$(( $(date +%s) - t0 )) \
          '$1=="analysis" && NF==3 {print c, m, "seed", s, "rmse", $2, "spread", $3, "wall", w}'
      else
        echo "$key $m seed $s FAILED $(echo "$out" | tail -1 | tr -s ' \n' ' ')"
      fi
    done
  done
done
fi | tee -a "$OUT/runs.txt"
python3 - "$OUT/runs.txt" <<'PY'
import sys, statistics as st
rows, failed = {}, {}
for line in open(sys.argv[1]):
    f = line.split()
    if len(f) == 10:
        rows.setdefault((f[0], f[1]), []).append((float(f[5]), float(f[7]), float(f[9])))
    elif len(f) >= 4 and f[4] == "FAILED":
        failed.setdefault((f[0], f[1]), []).append(f[3])
print("| n:F:gap | method | analysis RMSE | spread | seeds | failed seeds | s/run |")
print("|---|---|---|---|---|---|---|")
order = {}  # cells and methods in the order they ran
for line in open(sys.argv[1]):
    f = line.split()
    if len(f) >= 2:
        order.setdefault((f[0], f[1]), len(order))
first = {}
for (c, _), i in order.items():
    first.setdefault(c, i)
for key in sorted(order, key=lambda k: (first[k[0]], order[k])):
    v = rows.get(key, [])
    r = [a for a, _, _ in v]
    fl = ",".join(failed.get(key, [])) or "-"
    if r:
        sd = st.stdev(r) if len(r) > 1 else 0.0
        print(f"| {key[0]} | {key[1]} | {st.mean(r):.3f} ± {sd:.3f} | {st.mean([b for _, b, _ in v]):.3f} | {len(r)} | {fl} | {st.mean([w for *_, w in v]):.0f} |")
    else:
        print(f"| {key[0]} | {key[1]} | diverged | - | 0 | {fl} | - |")
PY
