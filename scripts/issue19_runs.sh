#!/usr/bin/env bash
# Every number of issue 19's tables, in one go (about an hour on 2 cores): DAPPER side by side
# (docs/dapper.md), EnSF on its authors' setups, the posterior check of KDE diffusion and the
# baselines, and the cycled L63 arctan comparison. Raw per-seed lines go to docs/data/.
set -euo pipefail
cd "$(dirname "$0")/.."
G=target/release/genda
D=docs/data
# numpy + netCDF4 of the venv (scripts/setup.sh) for the EnSF windows.
PY=${PYTHON:-${GENDA_VENV:-$HOME/.cache/genda/venv}/bin/python}
if [[ -z "${SKIP_DAPPER:-}" ]]; then
  python3 scripts/compare_dapper.py --seeds "${DAPPER_SEEDS:-1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20}" \
    --raw $D/dapper_runs.jsonl ${DAPPER_VENV:+--venv $DAPPER_VENV} > $D/dapper_log.txt 2>&1
fi
if [[ -z "${SKIP_ENSF:-}" ]]; then
  : > $D/ensf_reference_runs.txt
  $PY scripts/ensf_reference.py --seeds 1,2,3,4,5,6,7,8,9,10 --cases published_d100_nt200 --raw $D/ensf_reference_runs.txt > $D/ensf_reference_table.txt
  $PY scripts/ensf_reference.py --seeds 1,2,3,4,5 --cases published_d40 legacy_d40 published_d1000 legacy_d1000 --raw $D/ensf_reference_runs.txt >> $D/ensf_reference_table.txt
fi
for c in l63_arctan l63_quadratic l96_arctan l96_quadratic; do
  $G posterior configs/posterior_$c.toml -o $D/posterior_$c.md > $D/posterior_$c.log 2>&1
done
: > $D/l63_arctan_cycled_runs.txt
target/release/genda sweep configs/sweeps/nonlinear_l63.toml --quiet > $D/l63_arctan_cycled_table.md && cp output/sweeps/nonlinear_l63/results.csv $D/l63_arctan_cycled_runs.csv
echo done
