#!/usr/bin/env bash
# Idempotent set-up of everything genda needs on Debian 12 (or Ubuntu):
#   1. system libraries from apt: OpenMPI, HDF5, NetCDF (serial and MPI builds; genda links the
#      MPI ones, see .cargo/config.toml), libclang (bindgen), pkg-config, a font
#      for plots, slurm-wlm + munge for the real Slurm test; installed only when missing;
#   2. a venv outside the clone ($GENDA_HOME/venv) with numpy + netCDF4 + h5py + xarray (the external model of
#      the coupling tests) and, unless $LIBTORCH is set, torch;
#   3. libtorch: from $LIBTORCH if set (an HPC module or your own build), otherwise PyPI's `torch`
#      wheel in a venv kept outside the clone ($GENDA_HOME/venv, default ~/.cache/genda/venv),
#      installed only when that venv lacks the pinned version.
# tch and torch must be a matching pair: tch =0.24.0 binds torch 2.11.0 (see Cargo.toml).
set -euo pipefail

GENDA_HOME=${GENDA_HOME:-$HOME/.cache/genda}
VENV=${GENDA_VENV:-$GENDA_HOME/venv}
TORCH_VERSION=2.11.0
APT_PKGS=(libopenmpi-dev openmpi-bin libhdf5-dev libhdf5-openmpi-dev libnetcdf-dev libnetcdf-mpi-dev netcdf-bin libclang-dev pkg-config fonts-dejavu-core slurm-wlm munge)

log() { printf '[setup] %s\n' "$*"; }

sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then sudo_cmd=(sudo); fi

missing=()
for p in "${APT_PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing apt packages: ${missing[*]}"
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  log "apt packages present"
fi

if ! command -v cargo >/dev/null 2>&1; then
  log "cargo not found: install Rust (https://rustup.rs) and re-run"
  exit 1
fi

make_venv() {
  [ -x "$VENV/bin/python" ] && return 0
  mkdir -p "$GENDA_HOME"
  if ! python3 -m venv "$VENV" 2>/dev/null; then
    DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq python3-venv
    python3 -m venv "$VENV"
  fi
}

# numpy + netCDF4 for the external model of the coupling tests (tests/coupling_model.py), h5py
# for the oracle tests (tests/oracle/), xarray for the check that users' tools open the
# collectively written run files (tests/parallel_io.rs).
make_venv
if "$VENV/bin/python" -c "import numpy, netCDF4, h5py, xarray" 2>/dev/null; then
  log "numpy, netCDF4, h5py, xarray present in $VENV"
else
  log "installing numpy, netCDF4, h5py, xarray into $VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check numpy netCDF4 h5py xarray
fi

if [ -n "${LIBTORCH:-}" ]; then
  if [ ! -d "$LIBTORCH/lib" ]; then
    log "LIBTORCH=$LIBTORCH has no lib/ directory"
    exit 1
  fi
  log "using libtorch from LIBTORCH=$LIBTORCH"
  exit 0
fi

have_torch() {
  "$VENV/bin/python" - <<PY 2>/dev/null
import sys, torch
sys.exit(0 if torch.__version__.split("+")[0] == "$TORCH_VERSION" else 1)
PY
}

if have_torch; then
  log "torch $TORCH_VERSION present in $VENV"
else
  log "installing torch==$TORCH_VERSION into $VENV (several GB, first time only)"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "torch==$TORCH_VERSION"
  have_torch || { log "torch $TORCH_VERSION did not import from $VENV"; exit 1; }
fi
