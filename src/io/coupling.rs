//! Files of the NetCDF coupling contract (see docs/coupling.md): ensembles as `(member, x)`
//! variables, observation vectors as `(obs)`, and per-file completion markers.
use super::PendingFile;
use crate::error::{GendaError, Result};
use ndarray::Array2;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The `[coupling]` table of a config (the file contract is in docs/coupling.md).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CouplingConfig {
    /// Directory shared with the model; one `cycle_NNNNNN/` subdirectory per cycle.
    pub dir: PathBuf,
    /// Seconds to wait for a cycle's forecast before giving up.
    #[serde(default = "d_timeout")]
    pub timeout_s: f64,
    /// Milliseconds between looks for the marker.
    #[serde(default = "d_poll")]
    pub poll_ms: u64,
}

fn d_timeout() -> f64 {
    600.0
}
fn d_poll() -> u64 {
    20
}

fn ncerr(path: &Path, what: &str, e: netcdf::Error) -> GendaError {
    GendaError::file(path, format!("{what}: {e}"))
}

fn read_checked(path: &Path, var: &str, dims: &[(&str, usize)]) -> Result<Vec<f64>> {
    if !path.exists() {
        return Err(GendaError::file(path, "no such file"));
    }
    let f = netcdf::open(path).map_err(|e| ncerr(path, "not a readable NetCDF file", e))?;
    let v = f
        .variable(var)
        .ok_or_else(|| GendaError::file(path, format!("missing variable `{var}`")))?;
    let have: Vec<(String, usize)> = v.dimensions().iter().map(|d| (d.name(), d.len())).collect();
    let want: Vec<(String, usize)> = dims.iter().map(|(n, l)| (n.to_string(), *l)).collect();
    if have != want {
        return Err(GendaError::file(
            path,
            format!("variable `{var}` has dims {have:?}, expected {want:?}"),
        ));
    }
    let data: Vec<f64> = v
        .get_values::<f64, _>(..)
        .map_err(|e| ncerr(path, &format!("read `{var}`"), e))?;
    if let Some(i) = data.iter().position(|x| !x.is_finite()) {
        return Err(GendaError::file(
            path,
            format!("variable `{var}` has a non-finite value (NaN/inf) at flat index {i}"),
        ));
    }
    Ok(data)
}

/// Read ensemble variable `var` with dims (member = members, x = state_dim).
pub fn read_ensemble(
    path: &Path,
    var: &str,
    members: usize,
    state_dim: usize,
) -> Result<Array2<f64>> {
    let data = read_checked(path, var, &[("member", members), ("x", state_dim)])?;
    Ok(Array2::from_shape_vec((members, state_dim), data).expect("size checked"))
}

/// Read `observations` with dim (obs = obs_dim).
pub fn read_observations(path: &Path, obs_dim: usize) -> Result<Vec<f64>> {
    read_checked(path, "observations", &[("obs", obs_dim)])
}

/// Write an ensemble as `var` (member, x), CF-style, atomically.
pub fn write_ensemble(
    path: &Path,
    var: &str,
    ens: &Array2<f64>,
    cycle: usize,
    long_name: &str,
) -> Result<()> {
    let pending = PendingFile::new(path)?;
    {
        let mut f = netcdf::create_with(pending.tmp_path(), netcdf::Options::NETCDF4)
            .map_err(|e| ncerr(path, "create", e))?;
        let (m, n) = ens.dim();
        f.add_dimension("member", m)
            .map_err(|e| ncerr(path, "dimension member", e))?;
        f.add_dimension("x", n)
            .map_err(|e| ncerr(path, "dimension x", e))?;
        f.add_attribute("Conventions", "CF-1.8")
            .map_err(|e| ncerr(path, "attribute", e))?;
        f.add_attribute(
            "source",
            format!("genda {}", env!("CARGO_PKG_VERSION")).as_str(),
        )
        .map_err(|e| ncerr(path, "attribute", e))?;
        f.add_attribute("cycle", cycle as i32)
            .map_err(|e| ncerr(path, "attribute cycle", e))?;
        let mut v = f
            .add_variable::<f64>(var, &["member", "x"])
            .map_err(|e| ncerr(path, &format!("variable {var}"), e))?;
        v.put_attribute("long_name", long_name)
            .map_err(|e| ncerr(path, "attribute", e))?;
        v.put_attribute("units", "1")
            .map_err(|e| ncerr(path, "attribute", e))?;
        let e = ens.as_standard_layout();
        v.put_values(e.as_slice().expect("standard layout"), ..)
            .map_err(|e| ncerr(path, &format!("write {var}"), e))?;
        f.close().map_err(|e| ncerr(path, "close", e))?;
    }
    pending.commit()?;
    Ok(())
}

/// A completion marker: a small text file holding the cycle number, written atomically.
pub fn write_marker(path: &Path, cycle: usize) -> Result<()> {
    let pending = PendingFile::new(path)?;
    std::fs::write(pending.tmp_path(), format!("{cycle}\n"))
        .map_err(|e| GendaError::file(path, format!("write marker: {e}")))?;
    pending.commit()?;
    Ok(())
}

/// The cycle a marker announces.
pub fn read_marker(path: &Path) -> Result<usize> {
    let s = std::fs::read_to_string(path)
        .map_err(|e| GendaError::file(path, format!("read marker: {e}")))?;
    s.trim().parse().map_err(|_| {
        GendaError::file(
            path,
            format!("marker should hold a cycle number, holds {:?}", s.trim()),
        )
    })
}
