//! Files of the NetCDF coupling contract (see docs/coupling.md): ensembles as `(member, x)`
//! variables, observation vectors as `(obs)`, and per-file completion markers.
use super::{PendingFile, SharedPending};
use crate::error::{GendaError, Result};
use crate::parallel::{Collectives, SerialComm};
use ndarray::{Array2, ArrayView2};
use serde::{Deserialize, Serialize};
use std::ops::Range;
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

/// Open `path`, check that `var` has exactly the dims `dims` (names and lengths), and read the
/// rows `rows` of its first dimension (all of it for `None`), checking that every value is finite.
fn read_checked(
    path: &Path,
    var: &str,
    dims: &[(&str, usize)],
    rows: Option<Range<usize>>,
) -> Result<Vec<f64>> {
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
    let data: Vec<f64> = match rows.clone() {
        None => v.get_values::<f64, _>(..),
        Some(r) => {
            let ext: Vec<netcdf::Extent> = std::iter::once(r)
                .chain(dims[1..].iter().map(|d| 0..d.1))
                .map(Into::into)
                .collect();
            v.get_values::<f64, _>(netcdf::Extents::Extent(ext))
        }
    }
    .map_err(|e| ncerr(path, &format!("read `{var}`"), e))?;
    if let Some(i) = data.iter().position(|x| !x.is_finite()) {
        let row_len: usize = dims[1..].iter().map(|d| d.1).product();
        let i = i + rows.map_or(0, |r| r.start * row_len);
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
    read_ensemble_rows(path, var, members, state_dim, 0..members)
}

/// Read only the members `rows` of ensemble variable `var` (member = members, x = state_dim):
/// each rank of a member-split run reads its own slab of a file the model wrote whole.
pub fn read_ensemble_rows(
    path: &Path,
    var: &str,
    members: usize,
    state_dim: usize,
    rows: Range<usize>,
) -> Result<Array2<f64>> {
    let data = read_checked(
        path,
        var,
        &[("member", members), ("x", state_dim)],
        Some(rows.clone()),
    )?;
    Ok(Array2::from_shape_vec((rows.len(), state_dim), data).expect("size checked"))
}

/// Read `observations` with dim (obs = obs_dim).
pub fn read_observations(path: &Path, obs_dim: usize) -> Result<Vec<f64>> {
    read_checked(path, "observations", &[("obs", obs_dim)], None)
}

/// Write an ensemble as `var` (member, x), CF-style, atomically (one process).
pub fn write_ensemble(
    path: &Path,
    var: &str,
    ens: &Array2<f64>,
    cycle: usize,
    long_name: &str,
) -> Result<()> {
    let rows = 0..ens.nrows();
    write_ensemble_rows(
        path,
        var,
        ens.view(),
        rows,
        ens.nrows(),
        cycle,
        long_name,
        &SerialComm,
    )
}

/// Write an ensemble of `members` members as `var` (member, x), CF-style, atomically: every
/// rank of `comm` writes its members `rows` (`local`, (rows, x)) into the one file, collectively
/// on more than one rank.
#[allow(clippy::too_many_arguments)]
pub fn write_ensemble_rows(
    path: &Path,
    var: &str,
    local: ArrayView2<f64>,
    rows: Range<usize>,
    members: usize,
    cycle: usize,
    long_name: &str,
    comm: &dyn Collectives,
) -> Result<()> {
    let pending = SharedPending::new(path, None, comm)?;
    let res = (|| -> Result<()> {
        let parallel = comm.size() > 1;
        let mut f = pending.create_netcdf(comm)?;
        let n = local.ncols();
        f.add_dimension("member", members)
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
        {
            let mut v = f
                .add_variable::<f64>(var, &["member", "x"])
                .map_err(|e| ncerr(path, &format!("variable {var}"), e))?;
            v.put_attribute("long_name", long_name)
                .map_err(|e| ncerr(path, "attribute", e))?;
            v.put_attribute("units", "1")
                .map_err(|e| ncerr(path, "attribute", e))?;
            if parallel {
                v.access_collective()
                    .map_err(|e| ncerr(path, "collective access", e))?;
            }
        }
        f.enddef().map_err(|e| ncerr(path, "enddef", e))?;
        let e = local.as_standard_layout();
        super::netcdf_out::put_block(
            &mut f,
            path,
            var,
            &[rows.clone(), 0..n],
            e.as_slice().expect("standard layout"),
        )?;
        f.close().map_err(|e| ncerr(path, "close", e))
    })();
    super::agree(comm, res, path, "writing")?;
    pending.commit(comm)?;
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
