#!/usr/bin/env bash
# SDA on Lorenz-63 in the setup of Rozet & Louppe (2023, §4.1): window networks k = 1..4
# (configs/train_sda_l63_k*.toml, trained here if missing), smoothing 65-state windows given
# x every 8 steps (sd 0.4, "lo") or every step (sd 2, "hi"), seeds 1..5. Prints log p(y|x),
# log p(x), W1 to a bootstrap-PF reference and the W1 between two reference runs, RMSE of the
# sample mean, as mean ± std over seeds.
#   scripts/sda_l63.sh      # GENDA=..., KS="1 2 3 4", FREQS="lo hi", SEEDS="1 2 3 4 5",
#                           # SAMPLES=128, CORRECTIONS=1, NET=genda|reference
# NET=reference uses SDA's own network and training (configs/train_sda_l63_k*_reference.toml:
# residual MLP 256 x 5 with LayerNorm, per-variable scaling, AdamW, 53248 steps, ~22 min per k
# on 2 cores); NET=genda (default) the smaller plain MLP of configs/train_sda_l63_k*.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
GENDA=${GENDA:-target/release/genda}
KS=${KS:-"1 2 3 4"}
FREQS=${FREQS:-"lo hi"}
SEEDS=${SEEDS:-"1 2 3 4 5"}
SAMPLES=${SAMPLES:-128}
CORRECTIONS=${CORRECTIONS:-1}
case "${NET:-genda}" in
  genda) SUFFIX="" ;;
  reference) SUFFIX="_reference" ;;
  *) echo "NET must be genda or reference, got ${NET}" >&2; exit 2 ;;
esac
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
[ -f output/sda_l63_data.truth.h5 ] || "$GENDA" truth configs/sda_l63_data.toml
for k in $KS; do
  [ -f output/sda_l63_k$k$SUFFIX.h5 ] || "$GENDA" train configs/train_sda_l63_k$k$SUFFIX.toml
done
if [ -n "${RAW_FROM:-}" ]; then
  # Summarise earlier runs (e.g. the per-seed outputs of jobs/issue8_sweep.sbatch).
  grep -hv '^|' $RAW_FROM | grep -v '^\s*$'
else
for f in $FREQS; do
  for k in $KS; do
    sed -e "s#output/sda_l63_k2.h5#output/sda_l63_k$k$SUFFIX.h5#" -e "s/^members = .*/members = $SAMPLES/" \
        -e "s/^corrections = .*/corrections = $CORRECTIONS/" configs/sda_l63_smooth_$f.toml > "$tmp/$f-$k.toml"
    for s in $SEEDS; do
      out=$("$GENDA" smooth "$tmp/$f-$k.toml" --seed "$s" --no-output 2>&1) || { echo "$f k=$k seed $s failed: $out" >&2; continue; }
      echo "$out" | awk -v f=$f -v k=$k -v s=$s '
        $1=="sda" {ll=$4; lp=$7; r=$9}
        $1=="reference" {rll=$4; rlp=$7; rr=$9}
        $1=="w1" {w=$3; wf=$5}
        END {print f, k, s, ll, lp, r, w, wf, rll, rlp, rr}'
    done
  done
done
fi | tee "$tmp/all.txt"
python3 - "$tmp/all.txt" <<'PY'
import sys, statistics as st
rows = {}
for line in open(sys.argv[1]):
    f = line.split()
    if len(f) == 11:
        rows.setdefault((f[0], f[1]), []).append([float(v) for v in f[3:]])
def ms(v):
    return f"{st.mean(v):.2f} ± {st.stdev(v) if len(v) > 1 else 0.0:.2f}"
print("| obs | k | log p(y\\|x) | log p(x) | W1 to PF | RMSE | PF: log p(y\\|x) | PF: log p(x) | PF–PF W1 | PF RMSE | seeds |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for (f, k), v in sorted(rows.items()):
    c = list(zip(*v))
    print(f"| {f} | {k} | {ms(c[0])} | {ms(c[1])} | {ms(c[3])} | {ms(c[2])} | {ms(c[5])} | {ms(c[6])} | {ms(c[4])} | {ms(c[7])} | {len(v)} |")
PY
