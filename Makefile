# genda: `make demo` runs the demo twin experiment, `make test` runs every test.
# Both first run scripts/setup.sh, which installs what is missing and is a no-op otherwise.
SHELL := /bin/bash
GENDA_HOME ?= $(HOME)/.cache/genda
GENDA_VENV ?= $(GENDA_HOME)/venv
export GENDA_HOME GENDA_VENV
export PATH := $(GENDA_VENV)/bin:$(PATH)
ifndef LIBTORCH
export LIBTORCH_USE_PYTORCH := 1
endif
# tests launch `mpirun`; Open MPI refuses to run as root without these
export OMPI_ALLOW_RUN_AS_ROOT := 1
export OMPI_ALLOW_RUN_AS_ROOT_CONFIRM := 1
CARGO_FLAGS := --release --locked
GENDA := ./target/release/genda

.PHONY: setup build demo test test-slurm bench lint doctor clean-output

setup:
	@bash scripts/setup.sh

build: setup
	cargo build $(CARGO_FLAGS)

## demo: the Lorenz-96 twin experiment of Sakov & Oke (2008), its NetCDF output and a PNG plot
demo: build
	$(GENDA) doctor || true
	$(GENDA) run configs/l96_sakov2008.toml
	$(GENDA) plot output/l96_sakov2008.nc
	@echo "demo output: output/l96_sakov2008.nc and output/l96_sakov2008.png"

## test: unit tests, science checks, end-to-end CLI tests, real mpirun tests, and a real
## single-node Slurm cluster running jobs/twin.sbatch
test: build
	cargo test $(CARGO_FLAGS) -- --test-threads=2
	bash tests/slurm.sh

test-slurm: build
	bash tests/slurm.sh

bench: setup
	cargo bench --locked

## lint: clippy on every target, warnings as errors, and rustfmt's check.
lint: setup
	cargo clippy --locked --all-targets -- -D warnings
	cargo fmt --check

doctor: build
	$(GENDA) doctor

clean-output:
	rm -rf output
