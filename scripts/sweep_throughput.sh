#!/usr/bin/env bash
# The same experiments both ways on this machine: one `genda sweep` (in-process, --jobs 2)
# against separate `genda run` processes, two at a time (xargs -P 2), both on 2 cores; then
# checks that every experiment's time-mean scores agree bit for bit, and prints the speed-up.
#   scripts/sweep_throughput.sh [sweep file]   (default configs/sweeps/l63_throughput.toml)
set -euo pipefail
cd "$(dirname "$0")/.."
GENDA=${GENDA:-target/release/genda}
SWEEP=${1:-configs/sweeps/l63_throughput.toml}
PY=${PYTHON:-$HOME/.cache/genda/venv/bin/python}
JOBS=${JOBS:-2}
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
export OMP_NUM_THREADS=1 RAYON_NUM_THREADS=1
"$GENDA" sweep "$SWEEP" --export-configs "$tmp/configs" > "$tmp/list"
n=$(wc -l < "$tmp/list")
t0=$(date +%s.%N)
"$GENDA" sweep "$SWEEP" --jobs "$JOBS" --quiet --out-dir "$tmp/sweep" > "$tmp/sweep.log"
t1=$(date +%s.%N)
mkdir -p "$tmp/runs"
xargs -P "$JOBS" -I{} sh -c '"$0" run "$1" --quiet -o "$2/$(basename "$1" .toml).nc" > /dev/null' "$GENDA" {} "$tmp/runs" < "$tmp/list"
t2=$(date +%s.%N)
"$PY" - "$tmp" "$n" "$t0" "$t1" "$t2" <<'PY'
import csv, glob, os, sys
import netCDF4
tmp, n, t0, t1, t2 = sys.argv[1], int(sys.argv[2]), *map(float, sys.argv[3:])
rows = list(csv.DictReader(open(f"{tmp}/sweep/results.csv")))
files = sorted(glob.glob(f"{tmp}/runs/*.nc"))
assert len(rows) == n == len(files), (len(rows), n, len(files))
same = 0
for row, path in zip(rows, files):  # both in the sweep's order
    f = netCDF4.Dataset(path)
    ok = all(float(row[c]) == float(getattr(f, f"{c}_time_mean"))
             for c in ("rmse_analysis", "rmse_forecast", "spread_analysis", "spread_forecast"))
    same += ok
    if not ok:
        print("DIFFERENT:", os.path.basename(path), row["rmse_analysis"], f.rmse_analysis_time_mean)
sweep_s, procs_s = t1 - t0, t2 - t1
print(f"{n} experiments, {os.cpu_count()} cores, 2 at a time both ways")
print(f"genda sweep --jobs 2:          {sweep_s:8.2f} s")
print(f"separate genda run processes: {procs_s:8.2f} s  ({procs_s / n:.2f} s per process)")
print(f"speed-up of the sweep:        {procs_s / sweep_s:8.2f}x")
print(f"identical time-mean scores:   {same} of {n}")
sys.exit(0 if same == n else 1)
PY
