#!/usr/bin/env bash
# GPU check of genda's learned methods (issues 21 and 22): one command, at most ~8 minutes, on a
# node where genda builds (cargo, MPI, NetCDF/HDF5 and the venv's torch==2.11.0 of
# scripts/setup.sh, whose Linux wheel carries libtorch_cuda). It
#   1. builds (release) if needed and asks `genda doctor` whether libtorch sees a GPU;
#   2. runs the network unit tests (training, U-Net, SDA window networks, MASF/SF) — they build
#      their networks on the CPU; the CUDA path is exercised by the runs below;
#   3. times, on the GPU (`device = "cuda"`) and on the CPU (`"cpu"`), the same short runs:
#      DSM training of SDA's Lorenz-63 window network (`genda train`), SDA smoothing with the
#      reference's 1024 trajectories (`genda smooth`), MASF and SF as their authors' code on
#      Lorenz-63 (`genda run`, the reference training schedule), and compares CPU and GPU
#      analyses (same draws; float32 networks, so agreement is to training round-off, not bits);
#   3b. runs the training-free EnSF with `device = "cuda"`: CPU and GPU analyses of the same
#      draws at n = 4000, then one cycle at 10^6 and at 10^7 variables on the GPU;
#   4. writes output/gpu_check/report.md (and report.csv) with the times and the speed-ups.
# Without a GPU it stops after step 1 with a clear message; `GPU_CHECK_CPU_ONLY=1` runs every
# step on the CPU alone (to test this script).
#   scripts/gpu_check.sh            # GENDA=..., OUT_DIR=output/gpu_check, BUDGET_S=480
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${OUT_DIR:-output/gpu_check}
BUDGET_S=${BUDGET_S:-480}
CPU_ONLY=${GPU_CHECK_CPU_ONLY:-0}
start=$(date +%s)
mkdir -p "$OUT_DIR"
report="$OUT_DIR/report.md"
csv="$OUT_DIR/report.csv"
left() { echo $((BUDGET_S - ($(date +%s) - start))); }
log() { echo "gpu_check: $*" >&2; }

# 1. Build and detect.
VENV=${GENDA_VENV:-$HOME/.cache/genda/venv}
[ -d "$VENV/bin" ] && export PATH="$VENV/bin:$PATH"
export LIBTORCH_USE_PYTORCH=1
if [ -z "${GENDA:-}" ]; then
  cargo build --release --locked >&2
  GENDA=target/release/genda
fi
doctor=$("$GENDA" doctor 2>&1 || true)
gpu_line=$(echo "$doctor" | grep -E '^\s+\S+\s+GPU ' || true)
if echo "$gpu_line" | grep -q "none visible"; then
  if [ "$CPU_ONLY" != 1 ]; then
    echo "$doctor" >&2
    echo "gpu_check: libtorch sees no GPU on this node ($gpu_line); nothing to check. GPU_CHECK_CPU_ONLY=1 runs the CPU half." >&2
    exit 2
  fi
  devices="cpu"
else
  devices="cuda cpu"
fi
{
  echo "# genda GPU check, $(date -u +%Y-%m-%dT%H:%MZ), $(hostname)"
  echo
  echo '```'
  echo "$doctor"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  echo '```'
  echo
} > "$report"
echo "case,device,seconds,score" > "$csv"

# 2. The network unit tests.
if command -v cargo >/dev/null; then
  t0=$(date +%s)
  timeout "$(left)" cargo test --release --locked --lib score:: >&2
  log "network unit tests passed ($(( $(date +%s) - t0 )) s)"
  echo "- network unit tests (\`cargo test --lib score::\`): passed in $(( $(date +%s) - t0 )) s" >> "$report"
fi

# 3. The timed runs, each on every device.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$GENDA" truth configs/sda_l63_data.toml --set experiment.cycles=65536 -o "$tmp/sda.nc" >&2
"$GENDA" truth configs/masf_l63_climatology.toml -o "$tmp/clim.nc" >&2
timed() { # case device command... ; prints seconds
  local case=$1 dev=$2; shift 2
  local t0 t1 out
  t0=$(date +%s.%N)
  out=$(timeout "$(left)" "$@" 2>&1) || { log "$case on $dev failed: $(echo "$out" | tail -3)"; echo "$case,$dev,failed," >> "$csv"; return 0; }
  t1=$(date +%s.%N)
  local score
  score=$(echo "$out" | awk '$1=="analysis" && NF>=3 {print $2; exit} $1=="sda" {print $4; exit}')
  echo "$case,$dev,$(echo "$t1 - $t0" | bc),$score" >> "$csv"
  log "$case on $dev: $(echo "$t1 - $t0" | bc) s ${score:+(score $score)}"
}
for dev in $devices; do
  timed "sda_train_k2_3000_steps" "$dev" "$GENDA" train configs/train_sda_l63_k2.toml \
    --set data.path="\"$tmp/sda.h5\"" --set training.steps=3000 --set training.validate_every=0 \
    --set training.checkpoint_every=0 --set training.device="\"$dev\"" \
    --set output.weights="\"$tmp/k2_$dev.h5\"" --set output.checkpoint="\"$tmp/k2_$dev.ckpt.h5\""
  if [ -f "$tmp/k2_$dev.h5" ]; then
    timed "sda_smooth_1024_trajectories" "$dev" "$GENDA" smooth configs/sda_l63_smooth_lo.toml \
      --set filter.weights="\"$tmp/k2_$dev.h5\"" --set filter.members=1024 \
      --set filter.device="\"$dev\"" --no-output
  fi
  for m in masf sf; do
    timed "${m}_reference_l63_20_cycles" "$dev" "$GENDA" run configs/masf_l63_gap100_reference.toml \
      --set filter.method="\"$m\"" --set filter.pretrain_data="\"$tmp/clim.h5\"" \
      --set experiment.cycles=20 --set experiment.burn_in=5 --set filter.device="\"$dev\"" \
      -o "$tmp/${m}_$dev.nc"
  done
done

# 3b. The training-free EnSF on the device (issue 22): CPU and device analyses of the same
# draws at n = 4000 (f64: agreement to round-off), then one cycle at 10^6 (100 reverse steps)
# and 10^7 (10 steps, to fit the budget; no spin-up) on the GPU.
ensf_agree() { # device; prints the analysis RMSE and spread of a 3-cycle n = 4000 run
  timeout "$(left)" "$GENDA" run configs/l96_1m_ensf.toml --set model.dim=4000 \
    --set experiment.cycles=3 --set experiment.spinup_steps=0 --set filter.device="\"$1\"" \
    --no-output 2>&1 | awk '$1=="analysis" && NF>=3 {print $2, $3; exit}'
}
cpu_a=$(ensf_agree cpu)
echo "ensf_n4000_agreement,cpu,,$cpu_a" >> "$csv"
echo "- EnSF n = 4000, 3 cycles, CPU path: analysis RMSE, spread $cpu_a" >> "$report"
if [ "$devices" != cpu ]; then
  gpu_a=$(ensf_agree cuda)
  echo "ensf_n4000_agreement,cuda,,$gpu_a" >> "$csv"
  echo "- the same on the GPU (f64, same draws): $gpu_a" >> "$report"
  for nd in "1000000 100 400" "10000000 10 0"; do
    set -- $nd
    out=$(timeout "$(left)" "$GENDA" bench configs/l96_1m_ensf.toml --cycle --cycles 1 \
      --set model.dim="$1" --set filter.steps="$2" --set experiment.spinup_steps="$3" \
      --set filter.device='"cuda"' 2>&1) || { log "EnSF n = $1 on cuda failed: $(echo "$out" | tail -3)"; continue; }
    line=$(echo "$out" | grep 'per cycle' | head -1)
    echo "ensf_n$1_steps$2,cuda,$(echo "$line" | sed -E 's/.*analysis ([0-9.]+).*/\1/' | awk '{print $1/1e6}')," >> "$csv"
    echo "- EnSF n = $1, $2 reverse steps, GPU: $line" >> "$report"
    log "EnSF n = $1 on cuda: $line"
  done
fi

# 4. The report.
{
  echo
  echo "| case | device | s | score (analysis RMSE; SDA: log p(y|x)) |"
  echo "|---|---|---|---|"
  tail -n +2 "$csv" | awk -F, '{printf "| %s | %s | %s | %s |\n", $1, $2, $3, $4}'
  echo
  echo "Speed-ups (CPU s / GPU s):"
  awk -F, 'NR>1 && $3!="failed" {t[$1","$2]=$3; c[$1]=1} END {for (k in c) if ((k",cuda") in t && (k",cpu") in t) printf "- %s: %.2f\n", k, t[k",cpu"]/t[k",cuda"]}' "$csv"
} >> "$report"
log "report: $report ($(( $(date +%s) - start )) s in all)"
cat "$report"
