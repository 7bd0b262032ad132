//! genda: ensemble and score-based data assimilation on HPC machines.
//!
//! Rooms (see DESIGN.md and the README's layout): `models` (dynamics), `obs` (observation
//! operators), `filters` (analysis methods), `score` (libtorch networks), `parallel` (all MPI),
//! `io` (NetCDF/HDF5/PNG), `metrics`, `state`, `values`, `overrides`, `config`, `experiment` (the
//! cycle driver), `commands` (the one-off commands) and `cli`; imports run one way
//! (`tests/rooms.rs`).
// Config checks write `!(x > 0.0)` on purpose (it also rejects NaN); tile lists are
// `[Range]`s that often hold one tile; index loops over several equally long arrays are the
// numerics' plainest form.
#![allow(
    clippy::neg_cmp_op_on_partial_ord,
    clippy::nonminimal_bool,
    clippy::single_range_in_vec_init,
    clippy::needless_range_loop
)]
pub mod cli;
pub mod commands;
pub mod config;
pub mod error;
pub mod experiment;
pub mod filters;
pub mod io;
pub mod metrics;
pub mod models;
pub mod obs;
pub mod overrides;
pub mod parallel;
pub mod rng;
pub mod score;
pub mod state;
pub mod sweep;
pub mod values;

pub use error::{GendaError, Result};
