//! HDF5 trajectory datasets (`genda truth` output, the training data of score networks).
use super::PendingFile;
use crate::error::{GendaError, Result};
use hdf5::types::VarLenUnicode;
use std::path::Path;

/// A model trajectory sampled every `dt` time units.
#[derive(Debug, Clone, PartialEq)]
pub struct Trajectory {
    /// Row-major (times, state_dim).
    pub data: Vec<f64>,
    pub times: usize,
    pub state_dim: usize,
    /// Time between rows.
    pub dt: f64,
    /// Model name (e.g. "lorenz96").
    pub model: String,
}

fn h5err(path: &Path, what: &str, e: hdf5::Error) -> GendaError {
    GendaError::file(path, format!("{what}: {e}"))
}

/// Write `traj` as dataset `trajectory` (times, state_dim) with attributes `dt`, `model`, `config`.
pub fn write_trajectory(path: &Path, traj: &Trajectory, config_toml: &str) -> Result<()> {
    if traj.data.len() != traj.times * traj.state_dim {
        return Err(GendaError::Dimension {
            what: "trajectory data".into(),
            expected: traj.times * traj.state_dim,
            got: traj.data.len(),
        });
    }
    let pending = PendingFile::new(path)?;
    {
        let f = hdf5::File::create(pending.tmp_path()).map_err(|e| h5err(path, "create", e))?;
        let ds = f
            .new_dataset::<f64>()
            .shape((traj.times, traj.state_dim))
            .create("trajectory")
            .map_err(|e| h5err(path, "dataset trajectory", e))?;
        ds.write_raw(&traj.data[..])
            .map_err(|e| h5err(path, "write trajectory", e))?;
        ds.new_attr::<f64>()
            .create("dt")
            .and_then(|a| a.write_scalar(&traj.dt))
            .map_err(|e| h5err(path, "attribute dt", e))?;
        for (name, value) in [
            ("model", traj.model.as_str()),
            ("config", config_toml),
            ("genda_version", env!("CARGO_PKG_VERSION")),
        ] {
            let v: VarLenUnicode = value
                .parse()
                .map_err(|e| GendaError::file(path, format!("attribute {name}: {e}")))?;
            f.new_attr::<VarLenUnicode>()
                .create(name)
                .and_then(|a| a.write_scalar(&v))
                .map_err(|e| h5err(path, &format!("attribute {name}"), e))?;
        }
    }
    pending.commit()?;
    Ok(())
}

/// Read a trajectory written by `write_trajectory`, checking names and dims.
pub fn read_trajectory(path: &Path) -> Result<Trajectory> {
    let r = TrajectoryReader::open(path)?;
    let data: Vec<f64> = r
        .dataset
        .read_raw()
        .map_err(|e| h5err(path, "read `trajectory`", e))?;
    let model = r.model.map_err(|e| h5err(path, "attribute `model`", e))?;
    Ok(Trajectory {
        data,
        times: r.times,
        state_dim: r.state_dim,
        dt: r.dt,
        model,
    })
}

/// A trajectory file opened for reading rows in slabs (a replayed truth: each rank reads its own
/// columns of one row per cycle, never the whole file).
pub struct TrajectoryReader {
    pub path: std::path::PathBuf,
    dataset: hdf5::Dataset,
    pub times: usize,
    pub state_dim: usize,
    /// Time between rows.
    pub dt: f64,
    /// The file's `model` attribute (needed by `read_trajectory`, not by a replay).
    model: std::result::Result<String, hdf5::Error>,
}

impl TrajectoryReader {
    /// Open `path` and check its dataset `trajectory` (time, x) and attribute `dt`.
    pub fn open(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Err(GendaError::file(path, "no such file"));
        }
        let f = hdf5::File::open(path).map_err(|e| h5err(path, "not a readable HDF5 file", e))?;
        let ds = f
            .dataset("trajectory")
            .map_err(|e| h5err(path, "missing dataset `trajectory`", e))?;
        let shape = ds.shape();
        if shape.len() != 2 {
            return Err(GendaError::file(
                path,
                format!(
                    "dataset `trajectory` must be 2-D (time, x), has {} dims",
                    shape.len()
                ),
            ));
        }
        let dt: f64 = ds
            .attr("dt")
            .and_then(|a| a.read_scalar())
            .map_err(|e| h5err(path, "attribute `dt` of `trajectory`", e))?;
        let model = f
            .attr("model")
            .and_then(|a| a.read_scalar::<VarLenUnicode>())
            .map(|m| m.as_str().to_string());
        Ok(TrajectoryReader {
            path: path.to_path_buf(),
            dataset: ds,
            model,
            times: shape[0],
            state_dim: shape[1],
            dt,
        })
    }

    /// Columns `cols` of row `row`, into `out`.
    pub fn read_row(
        &self,
        row: usize,
        cols: std::ops::Range<usize>,
        out: &mut [f64],
    ) -> Result<()> {
        if row >= self.times || cols.end > self.state_dim || out.len() != cols.len() {
            return Err(GendaError::file(
                &self.path,
                format!(
                    "dataset `trajectory` ({} × {}): row {row}, columns {cols:?} out of range",
                    self.times, self.state_dim
                ),
            ));
        }
        let v: ndarray::Array1<f64> = self
            .dataset
            .read_slice_1d(ndarray::s![row, cols])
            .map_err(|e| h5err(&self.path, &format!("read row {row} of `trajectory`"), e))?;
        out.copy_from_slice(v.as_slice().expect("contiguous"));
        Ok(())
    }
}
