//! genda: ensemble and score-based data assimilation on HPC machines.
//!
//! Rooms (see DESIGN.md): `models` (dynamics), `obs` (observation operators), `filters`
//! (analysis methods), `score` (libtorch networks), `parallel` (all MPI), `io` (NetCDF/HDF5/PNG),
//! `metrics`, `config`, and `experiment` (the cycle driver).
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
