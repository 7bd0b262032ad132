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
use super::PendingFile;
use crate::error::{GendaError, Result};
use crate::metrics::{CycleStats, TimeAverage};
use ndarray::Array2;
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

pub struct RunWriter {
    file: netcdf::FileMut,
    pending: PendingFile,
    with_filter: bool,
    save_ensemble: bool,
    buffers: Vec<RowBuffer>,
}

/// Consecutive time rows of one variable, written in one hyperslab call: one small write per
/// variable per cycle costs more than the L96-40 analysis itself.
struct RowBuffer {
    name: &'static str,
    start: usize,
    row_len: usize,
    data: Vec<f64>,
}

/// Flush a variable's buffer once it holds this many values (≈ 1 MiB).
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

/// Define and write the coordinate variables: `time`, the state axes (`y`, `x` on a grid, else
/// the index `x`) and `obs_location`.
fn add_coordinates(
    file: &mut netcdf::FileMut,
    path: &Path,
    meta: &RunMeta,
    grid: Option<usize>,
) -> Result<()> {
    let e = |what: &str| at(path, what);
    {
        let mut v = file
            .add_variable::<f64>("time", &["time"])
            .map_err(e("variable time"))?;
        v.put_attribute("standard_name", "time")
            .map_err(e("time attrs"))?;
        v.put_attribute(
            "long_name",
            "model time of the observation (nondimensional model time units)",
        )
        .map_err(e("time attrs"))?;
        v.put_attribute("units", "1").map_err(e("time attrs"))?;
        v.put_attribute("axis", "T").map_err(e("time attrs"))?;
        let t: Vec<f64> = (1..=meta.cycles)
            .map(|k| k as f64 * meta.cycle_dt)
            .collect();
        v.put_values(&t, ..).map_err(e("write time"))?;
    }
    match grid {
        Some(side) => {
            let c: Vec<f64> = (0..side)
                .map(|j| 2.0 * std::f64::consts::PI * j as f64 / side as f64)
                .collect();
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
                v.put_values(&c, ..).map_err(e(&format!("write {name}")))?;
            }
        }
        None => {
            let mut v = file
                .add_variable::<i32>("x", &["x"])
                .map_err(e("variable x"))?;
            v.put_attribute("long_name", "state variable index")
                .map_err(e("x attrs"))?;
            v.put_attribute("units", "1").map_err(e("x attrs"))?;
            let ix: Vec<i32> = (0..meta.state_dim as i32).collect();
            v.put_values(&ix, ..).map_err(e("write x"))?;
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
    let loc: Vec<i32> = meta.obs_locations.iter().map(|&i| i as i32).collect();
    v.put_values(&loc, ..).map_err(e("write obs_location"))?;
    Ok(())
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
) -> Result<()> {
    let e = |what: &str| at(path, what);
    for (name, dims, long) in vars {
        let mut v = file
            .add_variable::<f64>(name, &dims)
            .map_err(e(&format!("variable {name}")))?;
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

impl RunWriter {
    pub fn create(path: &Path, meta: &RunMeta) -> Result<Self> {
        let pending = PendingFile::new(path)?;
        let mut file = netcdf::create_with(pending.tmp_path(), netcdf::Options::NETCDF4)
            .map_err(|e| ncerr(path, "create", e))?;
        let grid = meta.grid_side.filter(|s| s * s == meta.state_dim);
        let with_filter = meta.method.is_some();
        let save_ensemble = with_filter && meta.save_ensemble;
        add_dimensions(&mut file, path, meta, grid, save_ensemble)?;
        add_global_attributes(&mut file, path, meta)?;
        add_coordinates(&mut file, path, meta, grid)?;
        let quantity = match meta.model {
            "kolmogorov2d" => Some("relative vorticity"),
            "sqg" => Some("surface buoyancy"),
            _ => None,
        };
        let vars = data_variables(meta, grid, with_filter, save_ensemble);
        if with_filter && meta.distributional_scores {
            file.add_dimension("rank", meta.members + 1)
                .map_err(at(path, "dimension rank"))?;
        }
        add_data_variables(&mut file, path, vars, quantity)?;
        Ok(RunWriter {
            file,
            pending,
            with_filter,
            save_ensemble,
            buffers: Vec::new(),
        })
    }

    /// Queue row `k` of variable `name`; rows must arrive in order.
    fn put(&mut self, name: &'static str, data: &[f64], k: usize) -> Result<()> {
        let i = match self.buffers.iter().position(|b| b.name == name) {
            Some(i) => i,
            None => {
                self.buffers.push(RowBuffer {
                    name,
                    start: k,
                    row_len: data.len(),
                    data: Vec::new(),
                });
                self.buffers.len() - 1
            }
        };
        let b = &self.buffers[i];
        let next = b.start + b.data.len() / b.row_len.max(1);
        if b.row_len != data.len() || (k != next && !b.data.is_empty()) {
            self.flush(i)?;
        }
        let b = &mut self.buffers[i];
        if b.data.is_empty() {
            b.start = k;
            b.row_len = data.len();
        }
        b.data.extend_from_slice(data);
        if b.data.len() >= FLUSH_VALUES {
            self.flush(i)?;
        }
        Ok(())
    }

    fn flush(&mut self, i: usize) -> Result<()> {
        let path = self.pending.target().to_path_buf();
        let b = &mut self.buffers[i];
        if b.data.is_empty() {
            return Ok(());
        }
        let rows = b.data.len() / b.row_len;
        let (s, e) = (b.start, b.start + rows);
        let mut v = self
            .file
            .variable_mut(b.name)
            .ok_or_else(|| GendaError::file(&path, format!("variable {} missing", b.name)))?;
        // Rows along the first (time) dimension, every other dimension whole.
        let mut ext: Vec<std::ops::Range<usize>> = vec![s..e];
        ext.extend(v.dimensions()[1..].iter().map(|d| 0..d.len()));
        let ext: Vec<netcdf::Extent> = ext.into_iter().map(Into::into).collect();
        let res = v.put_values(&b.data, netcdf::Extents::Extent(ext));
        res.map_err(|err| ncerr(&path, &format!("write {}", b.name), err))?;
        b.start = e;
        b.data.clear();
        Ok(())
    }

    /// Write the truth and observations of cycle index `k` (0-based).
    pub fn write_truth(&mut self, k: usize, truth: &[f64], obs: &[f64]) -> Result<()> {
        self.put("truth", truth, k)?;
        self.put("observations", obs, k)
    }

    /// Write the filter output of cycle index `k` (0-based).
    pub fn write_filter(
        &mut self,
        k: usize,
        forecast_mean: &[f64],
        analysis_mean: &[f64],
        stats: &CycleStats,
        forecast: &Array2<f64>,
        analysis: &Array2<f64>,
    ) -> Result<()> {
        if !self.with_filter {
            return Ok(());
        }
        self.put("forecast_mean", forecast_mean, k)?;
        self.put("analysis_mean", analysis_mean, k)?;
        self.put("forecast_spread", &[stats.spread_forecast], k)?;
        self.put("analysis_spread", &[stats.spread_analysis], k)?;
        self.put("rmse_forecast", &[stats.rmse_forecast], k)?;
        self.put("rmse_analysis", &[stats.rmse_analysis], k)?;
        if self.save_ensemble {
            let f = forecast.as_standard_layout();
            let a = analysis.as_standard_layout();
            self.put(
                "forecast_ensemble",
                f.as_slice().expect("standard layout"),
                k,
            )?;
            self.put(
                "analysis_ensemble",
                a.as_slice().expect("standard layout"),
                k,
            )?;
        }
        Ok(())
    }

    /// Row `k` of the member weights of a weighted ensemble (only when the file has them).
    pub fn write_weights(&mut self, k: usize, forecast: &[f64], analysis: &[f64]) -> Result<()> {
        if self.save_ensemble && self.file.variable("analysis_weights").is_some() {
            self.put("forecast_weights", forecast, k)?;
            self.put("analysis_weights", analysis, k)?;
        }
        Ok(())
    }

    /// Reopen a run file from a snapshot taken by `snapshot` (restart), to be completed at `path`.
    pub fn resume(path: &Path, snapshot: &Path) -> Result<Self> {
        let pending = PendingFile::from_copy(path, snapshot)?;
        let file = netcdf::append(pending.tmp_path())
            .map_err(|e| ncerr(snapshot, "reopen snapshot", e))?;
        let with_filter = file.variable("analysis_mean").is_some();
        let save_ensemble = file.variable("analysis_ensemble").is_some();
        Ok(RunWriter {
            file,
            pending,
            with_filter,
            save_ensemble,
            buffers: Vec::new(),
        })
    }

    /// Flush everything written so far and copy the file, complete and consistent, to `dest`
    /// (atomically); the run keeps writing to its own file.
    pub fn snapshot(&mut self, dest: &Path) -> Result<()> {
        for i in 0..self.buffers.len() {
            self.flush(i)?;
        }
        let path = self.pending.target().to_path_buf();
        self.file.sync().map_err(|e| ncerr(&path, "sync", e))?;
        let out = PendingFile::from_copy(dest, self.pending.tmp_path())?;
        out.commit()?;
        Ok(())
    }

    /// Store the time averages, close the file and move it into place.
    /// CRPS of cycle index `k`.
    pub fn write_crps(&mut self, k: usize, crps: f64) -> Result<()> {
        self.put("crps_analysis", &[crps], k)
    }

    /// `finish` plus the rank histogram.
    pub fn finish_with(
        mut self,
        averages: Option<&TimeAverage>,
        extra: &[(&str, f64)],
        rank_histogram: Option<&[f64]>,
    ) -> Result<PathBuf> {
        if let Some(h) = rank_histogram {
            let path = self.pending.target().to_path_buf();
            let mut v = self
                .file
                .variable_mut("rank_histogram")
                .ok_or_else(|| GendaError::file(&path, "variable rank_histogram missing"))?;
            v.put_values(h, ..)
                .map_err(|e| ncerr(&path, "write rank_histogram", e))?;
        }
        self.finish(averages, extra)
    }

    /// `extra`: further time-averaged scores stored as global attributes.
    pub fn finish(
        mut self,
        averages: Option<&TimeAverage>,
        extra: &[(&str, f64)],
    ) -> Result<PathBuf> {
        let path = self.pending.target().to_path_buf();
        for i in 0..self.buffers.len() {
            self.flush(i)?;
        }
        if let Some(avg) = averages {
            let m = avg.mean();
            for (k, v) in [
                ("rmse_analysis_time_mean", m.rmse_analysis),
                ("rmse_forecast_time_mean", m.rmse_forecast),
                ("spread_analysis_time_mean", m.spread_analysis),
                ("spread_forecast_time_mean", m.spread_forecast),
            ] {
                self.file
                    .add_attribute(k, v)
                    .map_err(|e| ncerr(&path, k, e))?;
            }
            self.file
                .add_attribute("averaged_cycles", avg.count() as i32)
                .map_err(|e| ncerr(&path, "averaged_cycles", e))?;
        }
        for &(k, v) in extra {
            self.file
                .add_attribute(k, v)
                .map_err(|e| ncerr(&path, k, e))?;
        }
        let RunWriter { file, pending, .. } = self;
        file.close().map_err(|e| ncerr(&path, "close", e))?;
        pending.commit()
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
