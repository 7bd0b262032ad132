#!/usr/bin/env bash
# Real Slurm test: start a single-node cluster (scripts/slurm_cluster.sh), submit
# jobs/twin.sbatch with 2 tasks, wait for it, check its exit state and its NetCDF output, check
# that srun without PMI is refused, run a small sweep as a 2-task job (jobs/sweep.sbatch), and
# stop the daemons. Run by `make test` after cargo test.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
GENDA=$ROOT/target/release/genda
export GENDA_SLURM_DIR=${GENDA_SLURM_DIR:-/tmp/genda-slurm-test}
export SLURM_CONF=$GENDA_SLURM_DIR/slurm.conf
WORK=$(mktemp -d)
passed=0
failed=0
ok() { echo "slurm test ok: $*"; passed=$((passed + 1)); }
bad() { echo "slurm test FAILED: $*"; failed=$((failed + 1)); }
cleanup() { bash "$ROOT/scripts/slurm_cluster.sh" stop >/dev/null 2>&1 || true; rm -rf "$WORK"; }
trap cleanup EXIT

if ! bash scripts/slurm_cluster.sh start; then
  bad "single-node cluster did not start"
  echo "slurm: $passed passed, $failed failed"
  exit 1
fi

sed -e 's/cycles = 5000 /cycles = 600 /' -e 's/burn_in = 1000 /burn_in = 100 /' configs/l96_sakov2008.toml > "$WORK/twin.toml"
cd "$WORK"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
out=$(GENDA=$GENDA OUTDIR=$WORK/output timeout 300 sbatch --parsable --wait -n 2 -o "$WORK/job-%j.out" "$ROOT/jobs/twin.sbatch" "$WORK/twin.toml")
rc=$?
job=${out%%;*}
log="$WORK/job-$job.out"
state=$(scontrol show job "$job" 2>/dev/null | grep -o 'JobState=[A-Z]*' | head -1)
if [ $rc -eq 0 ] && [ "$state" = "JobState=COMPLETED" ]; then ok "job $job completed (exit 0, $state)"; else bad "job $job: sbatch rc=$rc $state"; cat "$log"; fi
nc="$WORK/output/twin_$job.nc"
ncdump -h "$nc" > "$WORK/header.txt" 2>&1
if grep -q 'time = 600' "$WORK/header.txt" && grep -q 'rmse_analysis_time_mean' "$WORK/header.txt" && grep -q '2 MPI ranks' "$WORK/header.txt"; then
  ok "NetCDF output $nc has 600 cycles, written by a 2-rank run"
else
  bad "NetCDF output $nc missing or wrong"; ls -la "$WORK/output" 2>/dev/null; cat "$log"
fi
if grep -q "on 2 rank(s)" "$log" && [ -f "$WORK/output/twin_$job.png" ]; then ok "job log reports 2 ranks; plot written"; else bad "job log"; cat "$log"; fi

# srun without PMI: Open MPI's own MPI_Init aborts; an MPI that starts singletons instead is
# caught by genda ("srun has no PMI"). Either way: a failed job and no output.
out=$(GENDA=$GENDA OUTDIR=$WORK/output2 LAUNCHER="srun --mpi=none" timeout 300 sbatch --parsable --wait -n 2 -o "$WORK/nopmi-%j.out" "$ROOT/jobs/twin.sbatch" "$WORK/twin.toml")
rc=$?
job=${out%%;*}
if [ $rc -ne 0 ] && grep -qE "srun has no PMI|MPI_Init" "$WORK/nopmi-$job.out" && ! ls "$WORK/output2"/*.nc >/dev/null 2>&1; then
  ok "srun without PMI refused with a clear error, no output"
else
  bad "srun without PMI was not refused (rc=$rc)"; cat "$WORK/nopmi-$job.out"
fi

# A sweep as one 2-task job (jobs/sweep.sbatch): experiments dealt out over the tasks, both
# shards written, rank 0's tables hold all 8.
cat > "$WORK/sweep.toml" <<EOT
[sweep]
name = "slurm"
base = "$ROOT/configs/dapper/l63_sakov2012_etkf.toml"
seeds = [1, 2]
out_dir = "$WORK/sweep"
set = { "experiment.cycles" = 200, "experiment.burn_in" = 20 }
[axes]
"filter.members" = [10, 20]
"filter.inflation" = [1.0, 1.02]
EOT
out=$(GENDA=$GENDA timeout 300 sbatch --parsable --wait -n 2 -c 1 -o "$WORK/sweep-%j.out" "$ROOT/jobs/sweep.sbatch" "$WORK/sweep.toml")
rc=$?
job=${out%%;*}
rows=$(($(wc -l < "$WORK/sweep/results.csv" 2>/dev/null || echo 0) - 1))
if [ $rc -eq 0 ] && [ "$rows" -eq 8 ] && [ -s "$WORK/sweep/runs.rank0.jsonl" ] && [ -s "$WORK/sweep/runs.rank1.jsonl" ] && grep -q "on 2 rank(s)" "$WORK/sweep-$job.out"; then
  ok "sweep job $job: 8 experiments over 2 tasks, results.csv complete"
else
  bad "sweep job $job (rc=$rc, $rows rows)"; cat "$WORK/sweep-$job.out"
fi

echo "slurm: $passed passed, $failed failed"
[ $failed -eq 0 ]
