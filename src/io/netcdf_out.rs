//! The run file: one NetCDF-4 file per run with CF-style metadata, written cycle by cycle to a
//! temporary name and renamed when the run completes.
//!
//! Dimensions: `time` (cycles), `x` (state), `obs` (observations), `member` (if ensembles are
//! saved). For 2-D models the state is the grid: dimensions `y` and `x` (the side each, with
//! coordinates in [0, 2π)), fields (time, y, x) and ensembles (time, member, y, x). Variables: `time`, `x`, `obs_location`, `truth`, `observations`, `forecast_mean`,
//! `analysis_mean`, `forecast_spread`, `analysis_spread`, `rmse_forecast`, `rmse_analysis`
//! and optionally `forecast_ensemble`, `analysis_ensemble` (with `forecast_weights`,
//! `analysis_weights` for a weighted ensemble). Global attributes hold the full config
//! and the time-averaged statistics.
use super::{agree, SharedPending};
use crate::error::{GendaError, Result};
use crate::metrics::{CycleStats, TimeAverage};
use crate::parallel::Collectives;
use ndarray::ArrayView2;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// Static description of a run, written as metadata.
pub struct RunMeta<'a> {
    pub name: &'a str,
    pub model: &'a str,
    /// Filter name, or `None` for a truth-only file (`genda truth`).
    pub method: Option<&'a str>,
    pub members: usize,
    pub state_dim: usize,
    /// State index of each observation.   (obs_dim)
    pub obs_locations: &'a [usize],
    pub obs_operator: &'a str,
    pub cycles: usize,
    /// Model time between cycles.
    pub cycle_dt: f64,
    pub burn_in: usize,
    pub save_ensemble: bool,
    pub config_toml: &'a str,
    pub ranks: usize,
    /// Side of the square grid of a 2-D model: fields are then written with dims (…, y, x).
    pub grid_side: Option<usize>,
    /// `crps_analysis` (time) and `rank_histogram` (rank) variables.
    pub distributional_scores: bool,
    /// The ensemble is a weighted sample (the particle filter): with `save_ensemble`, also
    /// `forecast_weights` and `analysis_weights` (time, member).
    pub weighted: bool,
}

/// This rank's part of the run file: the hyperslab of each kind of variable it writes. Every
/// rank of the run's communicator writes its own part collectively into one file (parallel
/// NetCDF-4); on one rank, `RunSlabs::whole` writes everything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunSlabs {
    /// State indices of the fields (truth, means) this rank writes; empty: none.
    pub state: Range<usize>,
    /// Observation indices it writes.
    pub obs: Range<usize>,
    /// Members of the saved ensembles it writes, each on the state indices `ens_state`.
    pub members: Range<usize>,
    pub ens_state: Range<usize>,
    /// Whether it writes the per-cycle scalars (spreads, RMSEs, CRPS), the member weights and
    /// the rank histogram (one rank does).
    pub scalars: bool,
}

impl RunSlabs {
    /// Everything (one writing rank).
    pub fn whole(meta: &RunMeta) -> Self {
        RunSlabs {
            state: 0..meta.state_dim,
            obs: 0..meta.obs_locations.len(),
            members: 0..meta.members,
            ens_state: 0..meta.state_dim,
            scalars: true,
        }
    }
}

/// What a run-file variable is indexed by after `time`: it decides which part of it a rank
/// writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A state field (x) or (y, x).
    Field,
    /// The observations (obs).
    Obs,
    /// One value per cycle.
    Scalar,
    /// (member, x) or (member, y, x).
    Ensemble,
    /// (member).
    Weights,
}

pub struct RunWriter {
    file: netcdf::FileMut,
    pending: SharedPending,
    with_filter: bool,
    save_ensemble: bool,
    weighted: bool,
    slabs: RunSlabs,
    /// Side of the grid of a 2-D model (fields (y, x)).
    grid: Option<usize>,
    state_dim: usize,
    obs_dim: usize,
    members: usize,
    /// Cycles between written time rows (`output.every`).
    every: usize,
    /// Field variables left out (`output.fields`).
    skip: Vec<String>,
    buffers: Vec<RowBuffer>,
}

/// Consecutive time rows of one variable, written in one hyperslab call: one small write per
/// variable per cycle costs more than the L96-40 analysis itself. Every rank buffers the same
/// variables and flushes at the same rows (the collective writes need all of them).
struct RowBuffer {
    name: &'static str,
    /// First time row held.
    start: usize,
    rows: usize,
    /// This rank's extent in the dimensions after `time` (empty product: it writes nothing).
    ext: Vec<Range<usize>>,
    /// Rows per write, the same on every rank (from the variable's global row length).
    flush_rows: usize,
    data: Vec<f64>,
}

/// Flush a variable's buffer once it holds this many values of the global row (≈ 1 MiB).
const FLUSH_VALUES: usize = 1 << 17;

fn ncerr(path: &Path, what: &str, e: netcdf::Error) -> GendaError {
    GendaError::file(path, format!("NetCDF {what}: {e}"))
}

/// A data variable of the run file: name, dimensions, long name.
type VarSpec = (&'static str, Vec<&'static str>, &'static str);

/// The error mapper for NetCDF step `what` on the file at `path`.
/// The error of a NetCDF call on `path` while doing `what` (for `map_err`).
pub fn at<'p>(path: &'p Path, what: &str) -> impl FnOnce(netcdf::Error) -> GendaError + 'p {
    let what = what.to_string();
    move |err: netcdf::Error| ncerr(path, &what, err)
}

/// A new NetCDF-4 file at `tmp` (a `PendingFile`'s temporary name for `path`) with the CF
/// convention and `title` set; errors name `path`.
pub fn create_cf(tmp: &Path, path: &Path, title: &str) -> Result<netcdf::FileMut> {
    let mut f = netcdf::create_with(tmp, netcdf::Options::NETCDF4).map_err(at(path, "create"))?;
    f.add_attribute("Conventions", "CF-1.8")
        .map_err(at(path, "attrs"))?;
    f.add_attribute("title", title).map_err(at(path, "attrs"))?;
    Ok(f)
}

/// Define the dimensions `time`, `y`/`x` (grid) or `x`, `obs` and, with saved ensembles, `member`.
fn add_dimensions(
    file: &mut netcdf::FileMut,
    path: &Path,
    meta: &RunMeta,
    grid: Option<usize>,
    save_ensemble: bool,
) -> Result<()> {
    let e = |what: &str| at(path, what);
    file.add_dimension("time", meta.cycles)
        .map_err(e("dimension time"))?;
    match grid {
        Some(side) => {
            file.add_dimension("y", side).map_err(e("dimension y"))?;
            file.add_dimension("x", side).map_err(e("dimension x"))?;
        }
        None => {
            file.add_dimension("x", meta.state_dim)
                .map_err(e("dimension x"))?;
        }
    }
    file.add_dimension("obs", meta.obs_locations.len())
        .map_err(e("dimension obs"))?;
    if save_ensemble {
        file.add_dimension("member", meta.members)
            .map_err(e("dimension member"))?;
    }
    Ok(())
}

/// Write the global attributes: CF conventions, provenance, the run's description and config.
fn add_global_attributes(file: &mut netcdf::FileMut, path: &Path, meta: &RunMeta) -> Result<()> {
    let e = |what: &str| at(path, what);
    let history = format!(
        "created by genda {} ({} MPI ranks)",
        env!("CARGO_PKG_VERSION"),
        meta.ranks
    );
    let globals: Vec<(&str, String)> = vec![
        ("Conventions", "CF-1.8".into()),
        ("title", format!("genda twin experiment `{}`", meta.name)),
        ("source", format!("genda {}", env!("CARGO_PKG_VERSION"))),
        ("history", history),
        ("experiment", meta.name.into()),
        ("model", meta.model.into()),
        ("method", meta.method.unwrap_or("truth").into()),
        ("obs_operator", meta.obs_operator.into()),
        ("config", meta.config_toml.into()),
    ];
    for (k, v) in globals {
        file.add_attribute(k, v.as_str())
            .map_err(e(&format!("attribute {k}")))?;
    }
    file.add_attribute("members", meta.members as i32)
        .map_err(e("attribute members"))?;
    file.add_attribute("burn_in_cycles", meta.burn_in as i32)
        .map_err(e("attribute burn_in_cycles"))?;
    Ok(())
}

/// Define the coordinate variables: `time`, the state axes (`y`, `x` on a grid, else the
/// index `x`) and `obs_location`.
fn define_coordinates(file: &mut netcdf::FileMut, path: &Path, grid: Option<usize>) -> Result<()> {
    let e = |what: &str| at(path, what);
    {
        let mut v = file
            .add_variable::<f64>("time", &["time"])
            .map_err(e("variable time"))?;
        for (k, val) in [
            ("standard_name", "time"),
            (
                "long_name",
                "model time of the observation (nondimensional model time units)",
            ),
            ("units", "1"),
            ("axis", "T"),
        ] {
            v.put_attribute(k, val).map_err(e("time attrs"))?;
        }
    }
    match grid {
        Some(_) => {
            for (name, axis) in [("y", "Y"), ("x", "X")] {
                let mut v = file
                    .add_variable::<f64>(name, &[name])
                    .map_err(e(&format!("variable {name}")))?;
                v.put_attribute(
                    "long_name",
                    format!("{name} coordinate of the periodic domain [0, 2π)"),
                )
                .map_err(e("coordinate attrs"))?;
                v.put_attribute("units", "1")
                    .map_err(e("coordinate attrs"))?;
                v.put_attribute("axis", axis)
                    .map_err(e("coordinate attrs"))?;
            }
        }
        None => {
            let mut v = file
                .add_variable::<i32>("x", &["x"])
                .map_err(e("variable x"))?;
            v.put_attribute("long_name", "state variable index")
                .map_err(e("x attrs"))?;
            v.put_attribute("units", "1").map_err(e("x attrs"))?;
        }
    }
    let mut v = file
        .add_variable::<i32>("obs_location", &["obs"])
        .map_err(e("variable obs_location"))?;
    v.put_attribute(
        "long_name",
        "state index observed by each observation (row-major y·side + x on a grid)",
    )
    .map_err(e("obs_location attrs"))?;
    v.put_attribute("units", "1")
        .map_err(e("obs_location attrs"))?;
    Ok(())
}

/// Write the coordinate values (`writer`: this rank writes them; the others take part in the
/// collective writes with nothing).
fn write_coordinates(
    file: &mut netcdf::FileMut,
    path: &Path,
    meta: &RunMeta,
    grid: Option<usize>,
    writer: bool,
) -> Result<()> {
    let whole = |len: usize| vec![if writer { 0..len } else { 0..0 }];
    let t: Vec<f64> = (1..=meta.cycles)
        .map(|k| k as f64 * meta.cycle_dt)
        .filter(|_| writer)
        .collect();
    put_block(file, path, "time", &whole(meta.cycles), &t)?;
    match grid {
        Some(side) => {
            let c: Vec<f64> = (0..side)
                .map(|j| 2.0 * std::f64::consts::PI * j as f64 / side as f64)
                .filter(|_| writer)
                .collect();
            for name in ["y", "x"] {
                put_block(file, path, name, &whole(side), &c)?;
            }
        }
        None => {
            let ix: Vec<i32> = (0..meta.state_dim as i32).filter(|_| writer).collect();
            put_block(file, path, "x", &whole(meta.state_dim), &ix)?;
        }
    }
    let loc: Vec<i32> = meta
        .obs_locations
        .iter()
        .map(|&i| i as i32)
        .filter(|_| writer)
        .collect();
    put_block(
        file,
        path,
        "obs_location",
        &whole(meta.obs_locations.len()),
        &loc,
    )
}

/// The data variables of a run, in file order: truth and observations, then (with a filter)
/// the means, spreads and RMSEs, the saved ensembles and their weights, and the
/// distributional scores.
fn data_variables(
    meta: &RunMeta,
    grid: Option<usize>,
    with_filter: bool,
    save_ensemble: bool,
) -> Vec<VarSpec> {
    let field: Vec<&str> = if grid.is_some() {
        vec!["time", "y", "x"]
    } else {
        vec!["time", "x"]
    };
    let ens_dims: Vec<&str> = if grid.is_some() {
        vec!["time", "member", "y", "x"]
    } else {
        vec!["time", "member", "x"]
    };
    let mut vars: Vec<VarSpec> = vec![
        ("truth", field.clone(), "true state"),
        (
            "observations",
            vec!["time", "obs"],
            "synthetic observations y = h(truth) + noise",
        ),
    ];
    if with_filter {
        vars.extend([
            (
                "forecast_mean",
                field.clone(),
                "forecast (prior) ensemble mean",
            ),
            (
                "analysis_mean",
                field.clone(),
                "analysis (posterior) ensemble mean",
            ),
            (
                "forecast_spread",
                vec!["time"],
                "forecast ensemble spread sqrt(mean variance)",
            ),
            (
                "analysis_spread",
                vec!["time"],
                "analysis ensemble spread sqrt(mean variance)",
            ),
            (
                "rmse_forecast",
                vec!["time"],
                "RMSE of forecast mean against truth",
            ),
            (
                "rmse_analysis",
                vec!["time"],
                "RMSE of analysis mean against truth",
            ),
        ]);
        if save_ensemble {
            vars.extend([
                ("forecast_ensemble", ens_dims.clone(), "forecast ensemble"),
                ("analysis_ensemble", ens_dims.clone(), "analysis ensemble"),
            ]);
            if meta.weighted {
                vars.extend([
                    (
                        "forecast_weights",
                        vec!["time", "member"],
                        "normalised weights of the forecast ensemble's members",
                    ),
                    (
                        "analysis_weights",
                        vec!["time", "member"],
                        "normalised weights of the analysis ensemble's members (carried to the next cycle)",
                    ),
                ]);
            }
        }
    }
    if with_filter && meta.distributional_scores {
        vars.push((
            "crps_analysis",
            vec!["time"],
            "CRPS of the analysis ensemble against the truth, mean over the state",
        ));
        vars.push((
            "rank_histogram",
            vec!["rank"],
            "members below the truth, counted over variables and the cycles after the burn-in",
        ));
    }
    vars
}

/// Define the data variables `vars` (f64, unitless); fields name the model's `quantity`.
fn add_data_variables(
    file: &mut netcdf::FileMut,
    path: &Path,
    vars: Vec<VarSpec>,
    quantity: Option<&str>,
    compression: u8,
) -> Result<()> {
    let e = |what: &str| at(path, what);
    for (name, dims, long) in vars {
        let lens: Vec<usize> = dims
            .iter()
            .map(|d| file.dimension(d).map(|d| d.len()).unwrap_or(1))
            .collect();
        let mut v = file
            .add_variable::<f64>(name, &dims)
            .map_err(e(&format!("variable {name}")))?;
        if compression > 0 && dims.first() == Some(&"time") {
            // One chunk per time row (and member): reading a time slice touches its chunks only.
            let chunk: Vec<usize> = lens
                .iter()
                .zip(&dims)
                .map(|(&l, d)| {
                    if matches!(*d, "time" | "member") {
                        1
                    } else {
                        l.max(1)
                    }
                })
                .collect();
            v.set_chunking(&chunk)
                .map_err(e(&format!("{name} chunking")))?;
            v.set_compression(i32::from(compression), true)
                .map_err(e(&format!("{name} compression")))?;
        }
        if dims.first() == Some(&"time") {
            // Every row is written before the file is moved into place, so no fill values:
            // with them the library writes the whole variable at its creation (contiguous
            // storage, allocated in full), 2.4 GB for 7 cycles of both ensembles at 10^6.
            // SAFETY: nothing reads a row before it is written (a restart reads a snapshot's
            // rows up to its cycle, all written).
            unsafe { v.set_nofill() }.map_err(e(&format!("{name} fill mode")))?;
        }
        let is_field = dims.last() == Some(&"x");
        let long = match quantity {
            Some(q) if is_field => format!("{long}: {q}"),
            _ => long.to_string(),
        };
        v.put_attribute("long_name", long)
            .map_err(e(&format!("{name} attrs")))?;
        v.put_attribute("units", "1")
            .map_err(e(&format!("{name} attrs")))?;
    }
    Ok(())
}

/// The run-file variables written cycle by cycle, in the order a restart copies them, with
/// what they are indexed by after `time`.
const ROW_VARIABLES: [(&str, Kind); 15] = [
    ("truth", Kind::Field),
    ("observations", Kind::Obs),
    ("forecast_mean", Kind::Field),
    ("analysis_mean", Kind::Field),
    ("forecast_spread", Kind::Scalar),
    ("analysis_spread", Kind::Scalar),
    ("rmse_forecast", Kind::Scalar),
    ("rmse_analysis", Kind::Scalar),
    ("forecast_ensemble", Kind::Ensemble),
    ("analysis_ensemble", Kind::Ensemble),
    ("forecast_weights", Kind::Weights),
    ("analysis_weights", Kind::Weights),
    ("crps_analysis", Kind::Scalar),
    ("time", Kind::Scalar),
    ("rank_histogram", Kind::Scalar),
];

/// The field variables `output.fields` may choose from.
pub const FIELD_VARIABLES: [&str; 4] = ["truth", "observations", "forecast_mean", "analysis_mean"];

/// How the run file is laid out beyond what the run is (`output.every`, `output.fields`,
/// `output.compression`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputLayout {
    /// Write every `every`-th cycle (1: all).
    pub every: usize,
    /// The field variables to write (empty: all of `FIELD_VARIABLES`).
    pub fields: Vec<String>,
    /// Deflate level 1–9 with one-time-row chunks (0: contiguous, uncompressed).
    pub compression: u8,
}

impl Default for OutputLayout {
    fn default() -> Self {
        OutputLayout {
            every: 1,
            fields: Vec::new(),
            compression: 0,
        }
    }
}

/// The NetCDF extents of the block `ext` (all counts zero when it holds nothing: a rank that
/// takes part in a collective write without data).
pub(crate) fn extents(ext: &[Range<usize>]) -> netcdf::Extents {
    let empty = ext.iter().any(|r| r.is_empty());
    netcdf::Extents::Extent(
        ext.iter()
            .map(|r| netcdf::Extent::SliceCount {
                start: if empty { 0 } else { r.start },
                count: if empty { 0 } else { r.len() },
                stride: 1,
            })
            .collect(),
    )
}

/// Write the block `ext` of variable `name` (collective on a parallel file: every rank calls
/// it, those without data with an empty block).
pub(crate) fn put_block<T: netcdf::NcTypeDescriptor>(
    file: &mut netcdf::FileMut,
    path: &Path,
    name: &str,
    ext: &[Range<usize>],
    data: &[T],
) -> Result<()> {
    let mut v = file
        .variable_mut(name)
        .ok_or_else(|| GendaError::file(path, format!("variable {name} missing")))?;
    v.put_values(data, extents(ext))
        .map_err(at(path, &format!("write {name}")))
}

/// Where `copy_rows` puts a block: (variable, extents, values).
type RowSink<'a> = dyn FnMut(&str, &[Range<usize>], &[f64]) -> Result<()> + 'a;

/// Copy the time rows `rows` of every variable of `vars` (name, this rank's extents after
/// `time`, its and the global row length) from `src` into `dst`, in blocks of ≈ 1 MiB of the
/// global row. Every rank makes the same calls (those without a part with empty blocks), so
/// a parallel source or destination sees collective calls.
fn copy_rows(
    vars: &[(&'static str, Vec<Range<usize>>, usize, usize)],
    src: &netcdf::File,
    src_path: &Path,
    dst: &mut RowSink<'_>,
    rows: Range<usize>,
) -> Result<()> {
    for (name, ext, local, global) in vars {
        let v = src.variable(name).ok_or_else(|| {
            GendaError::file(
                src_path,
                format!("run-file snapshot has no `{name}` (written with other output settings?)"),
            )
        })?;
        let block = (FLUSH_VALUES / (*global).max(1)).max(1);
        let mut r0 = rows.start;
        while r0 < rows.end {
            let r1 = (r0 + block).min(rows.end);
            let mut e = vec![r0..r1];
            e.extend(ext.iter().cloned());
            if *local == 0 {
                e[0] = 0..0;
            }
            let data: Vec<f64> = v
                .get_values::<f64, _>(extents(&e))
                .map_err(at(src_path, &format!("read {name}")))?;
            dst(name, &e, &data)?;
            r0 = r1;
        }
    }
    Ok(())
}

/// A NetCDF file opened for writing through the C library: netcdf 0.12 opens an existing
/// file in parallel only for reading (`open_par_with` gives a `File`), and the update of a
/// run-file snapshot is written by every rank. Closed on drop.
struct RawNetcdf {
    ncid: std::os::raw::c_int,
    path: PathBuf,
    parallel: bool,
    open: bool,
}

impl RawNetcdf {
    fn check(&self, rc: std::os::raw::c_int, what: &str) -> Result<()> {
        if rc == 0 {
            return Ok(());
        }
        // SAFETY: nc_strerror returns a pointer to a static NUL-terminated message.
        let msg = unsafe { std::ffi::CStr::from_ptr(netcdf_sys::nc_strerror(rc)) };
        Err(GendaError::file(
            &self.path,
            format!("NetCDF {what}: {}", msg.to_string_lossy()),
        ))
    }

    /// Open `path` for writing: in parallel on every rank of `comm` (more than one), else alone.
    fn open_write(path: &Path, comm: &dyn Collectives) -> Result<Self> {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(path.as_os_str().as_bytes())
            .map_err(|_| GendaError::file(path, "path holds a NUL byte"))?;
        let raw = comm.mpi_handle().filter(|_| comm.size() > 1);
        let mut f = RawNetcdf {
            ncid: -1,
            path: path.to_path_buf(),
            parallel: raw.is_some(),
            open: false,
        };
        let _g = netcdf_sys::libnetcdf_lock.lock();
        // SAFETY: a valid C path and an out-pointer; the communicator is this run's, valid for
        // the call (the library duplicates it).
        let rc = unsafe {
            match raw {
                Some(comm) => netcdf_sys::par::nc_open_par(
                    c.as_ptr(),
                    netcdf_sys::NC_WRITE,
                    comm,
                    crate::parallel::info_null(),
                    &mut f.ncid,
                ),
                None => netcdf_sys::nc_open(c.as_ptr(), netcdf_sys::NC_WRITE, &mut f.ncid),
            }
        };
        f.check(rc, "open for writing")?;
        f.open = true;
        Ok(f)
    }

    /// Write the block `ext` of variable `name` (collectively on a parallel file; an empty
    /// block writes nothing and takes part).
    fn put(&mut self, name: &str, ext: &[Range<usize>], data: &[f64]) -> Result<()> {
        let c = std::ffi::CString::new(name).expect("variable names hold no NUL");
        let empty = ext.iter().any(|r| r.is_empty());
        let start: Vec<usize> = ext
            .iter()
            .map(|r| if empty { 0 } else { r.start })
            .collect();
        let count: Vec<usize> = ext
            .iter()
            .map(|r| if empty { 0 } else { r.len() })
            .collect();
        if count.iter().product::<usize>() != data.len() {
            return Err(GendaError::file(
                &self.path,
                format!(
                    "block of `{name}` holds {} values for extents {ext:?}",
                    data.len()
                ),
            ));
        }
        let _g = netcdf_sys::libnetcdf_lock.lock();
        let mut varid = 0;
        // SAFETY: an open ncid, a valid C name and an out-pointer.
        let rc = unsafe { netcdf_sys::nc_inq_varid(self.ncid, c.as_ptr(), &mut varid) };
        self.check(
            rc,
            &format!("variable `{name}` (the snapshot was written with other output settings?)"),
        )?;
        if self.parallel {
            // SAFETY: an open ncid and one of its variables.
            let rc = unsafe {
                netcdf_sys::par::nc_var_par_access(self.ncid, varid, netcdf_sys::par::NC_COLLECTIVE)
            };
            self.check(rc, &format!("collective access of {name}"))?;
        }
        // SAFETY: start and count have the variable's rank (the caller's extents are built
        // from its dimensions) and data holds the product of count values.
        let rc = unsafe {
            netcdf_sys::nc_put_vara_double(
                self.ncid,
                varid,
                start.as_ptr(),
                count.as_ptr(),
                data.as_ptr(),
            )
        };
        self.check(rc, &format!("write {name}"))
    }

    /// Close the file (collective on a parallel file), reporting an error.
    fn close(mut self) -> Result<()> {
        self.open = false;
        let _g = netcdf_sys::libnetcdf_lock.lock();
        // SAFETY: an open ncid, closed once.
        let rc = unsafe { netcdf_sys::nc_close(self.ncid) };
        self.check(rc, "close")
    }
}

impl Drop for RawNetcdf {
    fn drop(&mut self) {
        if self.open {
            let _g = netcdf_sys::libnetcdf_lock.lock();
            // SAFETY: an open ncid, closed once.
            unsafe { netcdf_sys::nc_close(self.ncid) };
        }
    }
}

impl RunWriter {
    /// A new run file at `path`, written by every rank of `comm` together (collective parallel
    /// NetCDF-4 on more than one rank), each rank its `slabs`; every rank passes the same `meta`
    /// and `layout`.
    pub fn create(
        path: &Path,
        meta: &RunMeta,
        layout: &OutputLayout,
        slabs: RunSlabs,
        comm: &dyn Collectives,
    ) -> Result<Self> {
        let pending = SharedPending::new(path, None, comm)?;
        let res = Self::define(pending, meta, layout, slabs, comm);
        agree(comm, res, path, "creating the run file")
    }

    fn define(
        pending: SharedPending,
        meta: &RunMeta,
        layout: &OutputLayout,
        slabs: RunSlabs,
        comm: &dyn Collectives,
    ) -> Result<Self> {
        let path = pending.target().to_path_buf();
        let path = path.as_path();
        let parallel = comm.size() > 1;
        let mut file = pending.create_netcdf(comm)?;
        let grid = meta.grid_side.filter(|s| s * s == meta.state_dim);
        if let Some(side) = grid {
            for r in [&slabs.state, &slabs.ens_state] {
                if r.start % side != 0 || r.end % side != 0 {
                    return Err(GendaError::file(path, format!("a rank's part of the 2-D field (state indices {r:?}) is not whole grid rows of {side}")));
                }
            }
        }
        let every = layout.every.max(1);
        let rows = meta.cycles / every;
        let with_filter = meta.method.is_some();
        let save_ensemble = with_filter && meta.save_ensemble;
        let timed = RunMeta {
            cycles: rows,
            cycle_dt: meta.cycle_dt * every as f64,
            ..*meta
        };
        add_dimensions(&mut file, path, &timed, grid, save_ensemble)?;
        add_global_attributes(&mut file, path, meta)?;
        if every > 1 {
            file.add_attribute("output_every_cycles", every as i32)
                .map_err(at(path, "attribute output_every_cycles"))?;
        }
        let skip: Vec<String> = if layout.fields.is_empty() {
            Vec::new()
        } else {
            FIELD_VARIABLES
                .iter()
                .filter(|f| !layout.fields.iter().any(|g| g == *f))
                .map(|f| f.to_string())
                .collect()
        };
        let quantity = match meta.model {
            "kolmogorov2d" => Some("relative vorticity"),
            "sqg" => Some("surface buoyancy"),
            _ => None,
        };
        let vars: Vec<VarSpec> = data_variables(meta, grid, with_filter, save_ensemble)
            .into_iter()
            .filter(|v| !skip.iter().any(|s| s == v.0))
            .collect();
        if with_filter && meta.distributional_scores {
            file.add_dimension("rank", meta.members + 1)
                .map_err(at(path, "dimension rank"))?;
        }
        define_coordinates(&mut file, path, grid)?;
        add_data_variables(&mut file, path, vars, quantity, layout.compression)?;
        if parallel {
            let names: Vec<String> = file.variables().map(|v| v.name()).collect();
            for name in names {
                if let Some(v) = file.variable(&name) {
                    v.access_collective()
                        .map_err(at(path, &format!("collective access of {name}")))?;
                }
            }
        }
        // Leave define mode on every rank together before the first write.
        file.enddef().map_err(at(path, "enddef"))?;
        write_coordinates(&mut file, path, &timed, grid, slabs.scalars)?;
        Ok(RunWriter {
            file,
            pending,
            with_filter,
            save_ensemble,
            weighted: save_ensemble && meta.weighted,
            slabs,
            grid,
            state_dim: meta.state_dim,
            obs_dim: meta.obs_locations.len(),
            members: meta.members,
            every,
            skip,
            buffers: Vec::new(),
        })
    }

    /// This rank's extent of a `kind` variable in the dimensions after `time`.
    fn extent(&self, kind: Kind) -> Vec<Range<usize>> {
        let field = |r: &Range<usize>| match self.grid {
            Some(side) => vec![r.start / side..r.end / side, 0..side],
            None => vec![r.clone()],
        };
        let s = &self.slabs;
        match kind {
            Kind::Field => field(&s.state),
            Kind::Obs => vec![s.obs.clone()],
            Kind::Scalar => Vec::new(),
            Kind::Ensemble => {
                let mut e = vec![s.members.clone()];
                e.extend(field(&s.ens_state));
                e
            }
            Kind::Weights => vec![if s.scalars { 0..self.members } else { 0..0 }],
        }
    }

    /// Values of one time row of a `kind` variable: this rank's and the global count.
    fn row_lengths(&self, kind: Kind, ext: &[Range<usize>]) -> (usize, usize) {
        let local = match kind {
            Kind::Scalar => usize::from(self.slabs.scalars),
            _ => ext.iter().map(|r| r.len()).product(),
        };
        let global = match kind {
            Kind::Field => self.state_dim,
            Kind::Obs => self.obs_dim,
            Kind::Scalar => 1,
            Kind::Ensemble => self.members * self.state_dim,
            Kind::Weights => self.members,
        };
        (local, global)
    }

    /// Queue this rank's part `data` of cycle `cycle` (1-based) of variable `name`; cycles
    /// must arrive in order. Scalars and weights are passed by every rank and kept by the one
    /// that writes them.
    fn put(&mut self, name: &'static str, kind: Kind, cycle: usize, data: &[f64]) -> Result<()> {
        if cycle % self.every != 0 || self.skip.iter().any(|s| s == name) {
            return Ok(());
        }
        let row = cycle / self.every - 1;
        let i = match self.buffers.iter().position(|b| b.name == name) {
            Some(i) => i,
            None => {
                let ext = self.extent(kind);
                let (_, global) = self.row_lengths(kind, &ext);
                self.buffers.push(RowBuffer {
                    name,
                    start: row,
                    rows: 0,
                    ext,
                    flush_rows: (FLUSH_VALUES / global.max(1)).max(1),
                    data: Vec::new(),
                });
                self.buffers.len() - 1
            }
        };
        let (local, _) = self.row_lengths(kind, &self.buffers[i].ext);
        let data = match kind {
            Kind::Scalar | Kind::Weights if local == 0 => &[][..],
            _ => data,
        };
        if data.len() != local {
            return Err(GendaError::Dimension {
                what: format!("this rank's part of `{name}`"),
                expected: local,
                got: data.len(),
            });
        }
        let b = &self.buffers[i];
        if b.rows > 0 && row != b.start + b.rows {
            self.flush(i)?;
        }
        let b = &mut self.buffers[i];
        if b.rows == 0 {
            b.start = row;
        }
        b.data.extend_from_slice(data);
        b.rows += 1;
        if b.rows >= b.flush_rows {
            self.flush(i)?;
        }
        Ok(())
    }

    /// Write variable `i`'s queued rows (every rank at the same row, collectively).
    fn flush(&mut self, i: usize) -> Result<()> {
        let path = self.pending.target().to_path_buf();
        let b = &mut self.buffers[i];
        if b.rows == 0 {
            return Ok(());
        }
        let mut ext = vec![b.start..b.start + b.rows];
        ext.extend(b.ext.iter().cloned());
        if b.data.is_empty() {
            ext[0] = 0..0;
        }
        put_block(&mut self.file, &path, b.name, &ext, &b.data)?;
        b.start += b.rows;
        b.rows = 0;
        b.data.clear();
        Ok(())
    }

    fn flush_all(&mut self) -> Result<()> {
        for i in 0..self.buffers.len() {
            self.flush(i)?;
        }
        Ok(())
    }

    /// This rank's part of the truth and observations of cycle `cycle` (1-based).
    pub fn write_truth(&mut self, cycle: usize, truth: &[f64], obs: &[f64]) -> Result<()> {
        self.put("truth", Kind::Field, cycle, truth)?;
        self.put("observations", Kind::Obs, cycle, obs)
    }

    /// This rank's part of the filter output of cycle `cycle` (1-based): the means on its
    /// `state` columns, the statistics, and (with saved ensembles) its `members` on its
    /// `ens_state` columns, forecast and analysis.
    pub fn write_filter(
        &mut self,
        cycle: usize,
        forecast_mean: &[f64],
        analysis_mean: &[f64],
        stats: &CycleStats,
        ensembles: Option<(ArrayView2<f64>, ArrayView2<f64>)>,
    ) -> Result<()> {
        if !self.with_filter {
            return Ok(());
        }
        self.put("forecast_mean", Kind::Field, cycle, forecast_mean)?;
        self.put("analysis_mean", Kind::Field, cycle, analysis_mean)?;
        self.put(
            "forecast_spread",
            Kind::Scalar,
            cycle,
            &[stats.spread_forecast],
        )?;
        self.put(
            "analysis_spread",
            Kind::Scalar,
            cycle,
            &[stats.spread_analysis],
        )?;
        self.put("rmse_forecast", Kind::Scalar, cycle, &[stats.rmse_forecast])?;
        self.put("rmse_analysis", Kind::Scalar, cycle, &[stats.rmse_analysis])?;
        if self.save_ensemble {
            let (f, a) = ensembles.ok_or_else(|| {
                GendaError::file(self.pending.target(), "saved ensembles missing for a cycle")
            })?;
            for (name, e) in [("forecast_ensemble", f), ("analysis_ensemble", a)] {
                let e = e.as_standard_layout();
                self.put(name, Kind::Ensemble, cycle, e.as_slice().expect("standard"))?;
            }
        }
        Ok(())
    }

    /// The member weights of a weighted ensemble at cycle `cycle` (only when the file has them).
    pub fn write_weights(
        &mut self,
        cycle: usize,
        forecast: &[f64],
        analysis: &[f64],
    ) -> Result<()> {
        if self.weighted {
            self.put("forecast_weights", Kind::Weights, cycle, forecast)?;
            self.put("analysis_weights", Kind::Weights, cycle, analysis)?;
        }
        Ok(())
    }

    /// CRPS of cycle `cycle` (1-based).
    pub fn write_crps(&mut self, cycle: usize, crps: f64) -> Result<()> {
        self.put("crps_analysis", Kind::Scalar, cycle, &[crps])
    }

    /// Continue from a checkpoint's run-file snapshot: copy its first `cycles` cycles into this
    /// (new) file, each rank its own part, so a restart on any layout reads only its slabs.
    pub fn copy_from(
        &mut self,
        snapshot: &Path,
        cycles: usize,
        comm: &dyn Collectives,
    ) -> Result<()> {
        let res = self.copy_in(snapshot, cycles / self.every);
        agree(comm, res, snapshot, "copying the run-file snapshot")
    }

    fn copy_in(&mut self, snapshot: &Path, rows: usize) -> Result<()> {
        let src = netcdf::open(snapshot).map_err(at(snapshot, "open run-file snapshot"))?;
        let have = src.dimension("time").map(|d| d.len());
        let want = self.file.dimension("time").map(|d| d.len());
        if have != want {
            return Err(GendaError::file(snapshot, format!("run-file snapshot has {have:?} time rows, this run writes {want:?} (output.every changed since the checkpoint?)")));
        }
        let path = self.pending.target().to_path_buf();
        let vars = self.layout();
        let mut dst = |name: &str, e: &[Range<usize>], data: &[f64]| {
            put_block(&mut self.file, &path, name, e, data)
        };
        copy_rows(&vars, &src, snapshot, &mut dst, 0..rows)
    }

    /// What `copy_rows` needs of this file's layout (every variable present, with this rank's
    /// extents and row lengths).
    fn layout(&self) -> Vec<(&'static str, Vec<Range<usize>>, usize, usize)> {
        ROW_VARIABLES
            .iter()
            .filter(|(name, _)| {
                !matches!(*name, "time" | "rank_histogram") && self.file.variable(name).is_some()
            })
            .map(|&(name, kind)| {
                let ext = self.extent(kind);
                let (local, global) = self.row_lengths(kind, &ext);
                (name, ext, local, global)
            })
            .collect()
    }

    /// Bring the run-file snapshot `dest` (a file of this run's layout: made by
    /// `close_empty`, or updated by this method before) from cycle `valid`, up to which it
    /// equals this file, to cycle `cycle`: only the rows of the cycles since are written into
    /// it, each rank its own part, collectively, so a checkpoint costs the output since the
    /// snapshot's last update, not the whole file. Every rank calls it after the same cycle;
    /// the run keeps writing to its own file.
    pub fn snapshot(
        &mut self,
        dest: &Path,
        valid: usize,
        cycle: usize,
        comm: &dyn Collectives,
    ) -> Result<()> {
        let path = self.pending.target().to_path_buf();
        let res = self
            .flush_all()
            .and_then(|_| self.file.sync().map_err(at(&path, "sync")));
        agree(comm, res, &path, "flushing the run file")?;
        // The update is collective: every rank must see the file before any opens it.
        if !comm.all_ok(valid <= cycle && dest.exists()) {
            return Err(GendaError::file(
                dest,
                format!("run-file snapshot missing, or ahead of cycle {cycle} (at {valid})"),
            ));
        }
        let res = self.append_to(dest, valid / self.every..cycle / self.every, comm);
        agree(comm, res, dest, "updating the run-file snapshot")
    }

    /// Close a file that has its variables, coordinates and global attributes but no rows
    /// (a run-file snapshot before its first update) and move it into place.
    pub fn close_empty(self, comm: &dyn Collectives) -> Result<PathBuf> {
        let path = self.pending.target().to_path_buf();
        let RunWriter { file, pending, .. } = self;
        let res = file.close().map_err(at(&path, "close"));
        agree(comm, res, &path, "closing the run-file snapshot")?;
        pending.commit(comm)
    }

    /// Write this file's `rows` into `dest` (opened for writing by every rank).
    fn append_to(&mut self, dest: &Path, rows: Range<usize>, comm: &dyn Collectives) -> Result<()> {
        let mut out = RawNetcdf::open_write(dest, comm)?;
        let mut dst = |name: &str, e: &[Range<usize>], data: &[f64]| out.put(name, e, data);
        let path = self.pending.target().to_path_buf();
        copy_rows(&self.layout(), &self.file, &path, &mut dst, rows)?;
        out.close()
    }

    /// Store the time averages (`extra`: further time-averaged scores) and the rank
    /// histogram, close the file and move it into place. Every rank calls it; the root's
    /// values are written.
    pub fn finish(
        mut self,
        comm: &dyn Collectives,
        averages: Option<&TimeAverage>,
        extra: &[(&str, f64)],
        rank_histogram: Option<&[f64]>,
    ) -> Result<PathBuf> {
        let path = self.pending.target().to_path_buf();
        let res = self.write_closing(comm, averages, extra, rank_histogram);
        agree(comm, res, &path, "finishing the run file")?;
        let RunWriter { file, pending, .. } = self;
        let res = file.close().map_err(at(&path, "close"));
        agree(comm, res, &path, "closing the run file")?;
        pending.commit(comm)
    }

    /// The last rows, the rank histogram and the time means (global attributes).
    fn write_closing(
        &mut self,
        comm: &dyn Collectives,
        averages: Option<&TimeAverage>,
        extra: &[(&str, f64)],
        rank_histogram: Option<&[f64]>,
    ) -> Result<()> {
        let path = self.pending.target().to_path_buf();
        self.flush_all()?;
        if let Some(h) = rank_histogram {
            let ext = if self.slabs.scalars {
                vec![0..h.len()]
            } else {
                vec![0..0]
            };
            let data = if self.slabs.scalars { h } else { &[][..] };
            put_block(&mut self.file, &path, "rank_histogram", &ext, data)?;
        }
        // Attributes are collective: every rank writes the root's values.
        let mut attrs: Vec<(String, f64)> = Vec::new();
        if let Some(avg) = averages {
            let m = avg.mean();
            attrs.extend([
                ("rmse_analysis_time_mean".to_string(), m.rmse_analysis),
                ("rmse_forecast_time_mean".to_string(), m.rmse_forecast),
                ("spread_analysis_time_mean".to_string(), m.spread_analysis),
                ("spread_forecast_time_mean".to_string(), m.spread_forecast),
                ("averaged_cycles".to_string(), avg.count() as f64),
            ]);
        }
        attrs.extend(extra.iter().map(|&(k, v)| (k.to_string(), v)));
        let mut values: Vec<f64> = attrs.iter().map(|a| a.1).collect();
        comm.broadcast_f64(&mut values);
        for ((k, _), v) in attrs.iter().zip(values) {
            let res = if k == "averaged_cycles" {
                self.file.add_attribute(k, v as i32).map(|_| ())
            } else {
                self.file.add_attribute(k, v).map(|_| ())
            };
            res.map_err(at(&path, k))?;
        }
        Ok(())
    }
}

/// What `genda plot` and the tests read back from a run file.
#[derive(Debug, Clone)]
pub struct RunData {
    pub time: Vec<f64>,
    pub state_dim: usize,
    /// (time, x) row-major
    pub truth: Vec<f64>,
    pub analysis_mean: Vec<f64>,
    pub forecast_mean: Vec<f64>,
    pub rmse_forecast: Vec<f64>,
    pub rmse_analysis: Vec<f64>,
    pub spread_forecast: Vec<f64>,
    pub spread_analysis: Vec<f64>,
    pub method: String,
    pub experiment: String,
    pub rmse_analysis_time_mean: Option<f64>,
}

fn read_var(file: &netcdf::File, path: &Path, name: &str, dims: &[&str]) -> Result<Vec<f64>> {
    let v = file.variable(name).ok_or_else(|| {
        GendaError::file(
            path,
            format!("missing variable `{name}` (is this a genda run file?)"),
        )
    })?;
    let have: Vec<String> = v.dimensions().iter().map(|d| d.name()).collect();
    if have != dims {
        return Err(GendaError::file(
            path,
            format!("variable `{name}` has dims {have:?}, expected {dims:?}"),
        ));
    }
    v.get_values::<f64, _>(..)
        .map_err(|e| ncerr(path, &format!("read {name}"), e))
}

fn read_string_attr(file: &netcdf::File, name: &str) -> String {
    match file.attribute(name).map(|a| a.value()) {
        Some(Ok(netcdf::AttributeValue::Str(s))) => s,
        _ => String::new(),
    }
}

/// Read a run file, checking that every variable exists with the right dims.
pub fn read_run(path: &Path) -> Result<RunData> {
    if !path.exists() {
        return Err(GendaError::file(path, "no such file"));
    }
    let file = netcdf::open(path).map_err(|e| ncerr(path, "open (not a NetCDF file?)", e))?;
    let nx = file
        .dimension("x")
        .ok_or_else(|| GendaError::file(path, "missing dimension `x`"))?
        .len();
    let ny = file.dimension("y").map(|d| d.len());
    let state_dim = nx * ny.unwrap_or(1);
    let field: &[&str] = if ny.is_some() {
        &["time", "y", "x"]
    } else {
        &["time", "x"]
    };
    let rmse_analysis_time_mean = match file.attribute("rmse_analysis_time_mean").map(|a| a.value())
    {
        Some(Ok(netcdf::AttributeValue::Double(v))) => Some(v),
        _ => None,
    };
    Ok(RunData {
        time: read_var(&file, path, "time", &["time"])?,
        state_dim,
        truth: read_var(&file, path, "truth", field)?,
        analysis_mean: read_var(&file, path, "analysis_mean", field)?,
        forecast_mean: read_var(&file, path, "forecast_mean", field)?,
        rmse_forecast: read_var(&file, path, "rmse_forecast", &["time"])?,
        rmse_analysis: read_var(&file, path, "rmse_analysis", &["time"])?,
        spread_forecast: read_var(&file, path, "forecast_spread", &["time"])?,
        spread_analysis: read_var(&file, path, "analysis_spread", &["time"])?,
        method: read_string_attr(&file, "method"),
        experiment: read_string_attr(&file, "experiment"),
        rmse_analysis_time_mean,
    })
}
