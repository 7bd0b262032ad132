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

/// Open `path` for reading on every rank of `comm`: together, through parallel NetCDF-4
/// (MPI-IO; each rank then reads its own block) when `comm` has more than one rank and the file is
/// NetCDF-4 (what HDF5-based writers such as a parallel model's produce); otherwise (one rank, or
/// a classic-format file that MPI-IO cannot open) each rank opens it by itself. Returns the file
/// and whether it is open in parallel.
fn open_input(path: &Path, comm: &dyn Collectives) -> Result<(netcdf::File, bool)> {
    if !path.exists() {
        return Err(GendaError::file(path, "no such file"));
    }
    if let Some(raw) = comm.mpi_handle().filter(|_| comm.size() > 1) {
        let par = netcdf::open_par_with(
            path,
            raw,
            crate::parallel::info_null(),
            netcdf::Options::empty(),
        );
        // The open is collective: every rank sees the same file, so all succeed or all fall back.
        if comm.all_ok(par.is_ok()) {
            return Ok((par.expect("checked"), true));
        }
        if let Err(e) = &par {
            log::debug!(
                "{}: no parallel open ({e}); each rank reads it by itself",
                path.display()
            );
        }
    }
    let f = netcdf::open(path).map_err(|e| ncerr(path, "not a readable NetCDF file", e))?;
    Ok((f, false))
}

/// Check that `var` of `f` has exactly the dims `dims` (names and lengths).
fn checked_var<'f>(
    f: &'f netcdf::File,
    path: &Path,
    var: &str,
    dims: &[(&str, usize)],
) -> Result<netcdf::Variable<'f>> {
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
    Ok(v)
}

/// Values of the block `block` (one range per dim) of `v`, row-major, all finite; `dims` are
/// `v`'s dims (for the flat index in the error).
fn read_block(
    v: &netcdf::Variable,
    path: &Path,
    var: &str,
    dims: &[(&str, usize)],
    block: &[Range<usize>],
) -> Result<Vec<f64>> {
    // Called with an empty block too: in a collective read every rank takes part.
    let data: Vec<f64> = v
        .get_values::<f64, _>(super::netcdf_out::extents(block))
        .map_err(|e| ncerr(path, &format!("read `{var}`"), e))?;
    if let Some(i) = data.iter().position(|x| !x.is_finite()) {
        // The flat index in the whole variable of the i-th value of the block.
        let mut rest = i;
        let mut flat = 0;
        for (k, r) in block.iter().enumerate().rev() {
            let at = r.start + rest % r.len();
            rest /= r.len();
            let stride: usize = dims[k + 1..].iter().map(|d| d.1).product();
            flat += at * stride;
        }
        return Err(GendaError::file(
            path,
            format!("variable `{var}` has a non-finite value (NaN/inf) at flat index {flat}"),
        ));
    }
    Ok(data)
}

/// Read ensemble variable `var` with dims (member = members, x = state_dim), on one process.
pub fn read_ensemble(
    path: &Path,
    var: &str,
    members: usize,
    state_dim: usize,
) -> Result<Array2<f64>> {
    read_ensemble_block(
        path,
        var,
        (members, state_dim),
        0..members,
        0..state_dim,
        &SerialComm,
    )
}

/// Read the block `rows` × `cols` of ensemble variable `var` (member = members, x = state_dim)
/// on every rank of `comm`: each rank its own members and state columns of the one file, with
/// one collective read where the file opens in parallel.
pub fn read_ensemble_block(
    path: &Path,
    var: &str,
    (members, state_dim): (usize, usize),
    rows: Range<usize>,
    cols: Range<usize>,
    comm: &dyn Collectives,
) -> Result<Array2<f64>> {
    let dims = [("member", members), ("x", state_dim)];
    let (f, parallel) = open_input(path, comm)?;
    // Every rank checks the same dims, so a wrong file fails everywhere before the collective
    // read; a non-finite value fails only where it is (the caller agrees).
    let v = checked_var(&f, path, var, &dims)?;
    if parallel {
        v.access_collective()
            .map_err(|e| ncerr(path, "collective access", e))?;
    }
    let data = read_block(&v, path, var, &dims, &[rows.clone(), cols.clone()])?;
    Ok(Array2::from_shape_vec((rows.len(), cols.len()), data).expect("size checked"))
}

/// Read `observations` with dim (obs = obs_dim), on one process.
pub fn read_observations(path: &Path, obs_dim: usize) -> Result<Vec<f64>> {
    read_observations_at(
        path,
        obs_dim,
        &(0..obs_dim).collect::<Vec<_>>(),
        &SerialComm,
    )
}

/// The observations of global indices `global` (ascending runs, e.g. a domain's with its halo,
/// which wraps around the ring) of `observations` (obs = obs_dim), on every rank of `comm`:
/// each rank reads only its runs.
pub fn read_observations_at(
    path: &Path,
    obs_dim: usize,
    global: &[usize],
    comm: &dyn Collectives,
) -> Result<Vec<f64>> {
    let dims = [("obs", obs_dim)];
    let (f, _) = open_input(path, comm)?;
    let v = checked_var(&f, path, "observations", &dims)?;
    let mut out = Vec::with_capacity(global.len());
    let mut k = 0;
    while k < global.len() {
        let mut e = k + 1;
        while e < global.len() && global[e] == global[e - 1] + 1 {
            e += 1;
        }
        let run = global[k]..global[e - 1] + 1;
        if run.end > obs_dim {
            return Err(GendaError::file(
                path,
                format!("observation {} requested of {obs_dim}", run.end - 1),
            ));
        }
        out.extend(read_block(&v, path, "observations", &dims, &[run])?);
        k = e;
    }
    Ok(out)
}

/// Write an ensemble as `var` (member, x), CF-style, atomically (one process).
pub fn write_ensemble(
    path: &Path,
    var: &str,
    ens: &Array2<f64>,
    cycle: usize,
    long_name: &str,
) -> Result<()> {
    write_ensemble_block(
        path,
        var,
        ens.view(),
        (0..ens.nrows(), 0..ens.ncols()),
        (ens.nrows(), ens.ncols()),
        cycle,
        long_name,
        &SerialComm,
    )
}

/// Write an ensemble of `members` members on `state_dim` variables as `var` (member, x),
/// CF-style, atomically: every rank of `comm` writes its block `local` (its members `rows` on the
/// state columns `cols`) into the one file, collectively on more than one rank.
#[allow(clippy::too_many_arguments)]
pub fn write_ensemble_block(
    path: &Path,
    var: &str,
    local: ArrayView2<f64>,
    (rows, cols): (Range<usize>, Range<usize>),
    (members, state_dim): (usize, usize),
    cycle: usize,
    long_name: &str,
    comm: &dyn Collectives,
) -> Result<()> {
    let pending = SharedPending::new(path, None, comm)?;
    let res = (|| -> Result<()> {
        let parallel = comm.size() > 1;
        let mut f = pending.create_netcdf(comm)?;
        let n = state_dim;
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
            &[rows.clone(), cols.clone()],
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
