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

    /// The rows `rows` (every column), row-major.
    pub fn read_rows(&self, rows: std::ops::Range<usize>) -> Result<Vec<f64>> {
        if rows.end > self.times || rows.start > rows.end {
            return Err(GendaError::file(
                &self.path,
                format!(
                    "dataset `trajectory` ({} × {}): rows {rows:?} out of range",
                    self.times, self.state_dim
                ),
            ));
        }
        let v: ndarray::Array2<f64> = self
            .dataset
            .read_slice_2d(ndarray::s![rows.clone(), ..])
            .map_err(|e| {
                h5err(
                    &self.path,
                    &format!("read rows {rows:?} of `trajectory`"),
                    e,
                )
            })?;
        Ok(v.into_raw_vec_and_offset().0)
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

/// Why a block of `len` values at `start` of shape `count` does not fit a dataset of `shape`
/// (`None`: it fits; an empty block fits anywhere).
pub(crate) fn block_problem(
    shape: &[usize],
    start: &[usize],
    count: &[usize],
    len: usize,
) -> Option<String> {
    let values: usize = count.iter().product();
    let fits = start.len() == shape.len()
        && count.len() == shape.len()
        && len == values
        && (values == 0
            || start
                .iter()
                .zip(count)
                .zip(shape)
                .all(|((s, c), n)| s + c <= *n));
    (!fits).then(|| {
        format!("a block at {start:?} of {count:?} ({len} values) does not fit a dataset of shape {shape:?}")
    })
}

/// Write `data` (row-major, of shape `count`) into the block of `ds` that starts at `start`.
/// With `collective` (a dataset of a file opened with MPI-IO), every rank of the file's
/// communicator must call this for the dataset, a rank with nothing to write with an empty
/// `count`: the transfer is one MPI-IO collective (two-phase I/O, aggregated writes). Without it
/// the write is independent, and a rank with nothing to write may skip the call.
///
/// hdf5-metno 0.12's `write_slice` sets no data-transfer property list, so the collective
/// transfer mode needs these few raw HDF5 calls (under the crate's library lock).
pub(crate) fn write_block(
    ds: &hdf5::Dataset,
    start: &[usize],
    count: &[usize],
    data: &[f64],
    collective: bool,
) -> std::result::Result<(), String> {
    use hdf5_sys::h5d::H5Dwrite;
    use hdf5_sys::h5i::hid_t;
    use hdf5_sys::h5p::{
        H5FD_mpio_xfer_t, H5Pclose, H5Pcreate, H5Pset_dxpl_mpio, H5P_CLS_DATASET_XFER,
    };
    use hdf5_sys::h5s::{
        H5Sclose, H5Screate_simple, H5Sselect_hyperslab, H5Sselect_none, H5S_SELECT_SET,
    };
    use hdf5_sys::h5t::H5T_NATIVE_DOUBLE;
    if let Some(problem) = block_problem(&ds.shape(), start, count, data.len()) {
        return Err(problem);
    }
    let len = data.len();
    // Closes the HDF5 objects it holds when dropped (on every return path).
    struct Ids(Vec<(hid_t, unsafe extern "C" fn(hid_t) -> hdf5_sys::h5::herr_t)>);
    impl Drop for Ids {
        fn drop(&mut self) {
            for &(id, close) in self.0.iter().rev() {
                // SAFETY: each id was returned valid by its create call and is closed once.
                unsafe { close(id) };
            }
        }
    }
    let fail = |what: &str| Err(format!("HDF5 {what} failed"));
    hdf5::sync::sync(|| {
        let mut ids = Ids(Vec::new());
        // SAFETY: plain HDF5 C calls on ids created here or owned by `ds` (alive for the call),
        // under hdf5-metno's library lock; `data` holds exactly the selected `len` values.
        unsafe {
            let dxpl = H5Pcreate(*H5P_CLS_DATASET_XFER);
            if dxpl < 0 {
                return fail("H5Pcreate(dataset transfer)");
            }
            ids.0.push((dxpl, H5Pclose));
            let mode = if collective {
                H5FD_mpio_xfer_t::H5FD_MPIO_COLLECTIVE
            } else {
                H5FD_mpio_xfer_t::H5FD_MPIO_INDEPENDENT
            };
            if collective && H5Pset_dxpl_mpio(dxpl, mode) < 0 {
                return fail("H5Pset_dxpl_mpio");
            }
            let fspace = hdf5_sys::h5d::H5Dget_space(ds.id());
            if fspace < 0 {
                return fail("H5Dget_space");
            }
            ids.0.push((fspace, H5Sclose));
            let dims: Vec<u64> = count.iter().map(|&c| c as u64).collect();
            let mspace = H5Screate_simple(dims.len() as i32, dims.as_ptr(), std::ptr::null());
            if mspace < 0 {
                return fail("H5Screate_simple");
            }
            ids.0.push((mspace, H5Sclose));
            if len == 0 {
                if H5Sselect_none(fspace) < 0 || H5Sselect_none(mspace) < 0 {
                    return fail("H5Sselect_none");
                }
            } else {
                let at: Vec<u64> = start.iter().map(|&s| s as u64).collect();
                if H5Sselect_hyperslab(
                    fspace,
                    H5S_SELECT_SET,
                    at.as_ptr(),
                    std::ptr::null(),
                    dims.as_ptr(),
                    std::ptr::null(),
                ) < 0
                {
                    return fail("H5Sselect_hyperslab");
                }
            }
            if H5Dwrite(
                ds.id(),
                *H5T_NATIVE_DOUBLE,
                mspace,
                fspace,
                dxpl,
                data.as_ptr().cast(),
            ) < 0
            {
                return fail("H5Dwrite");
            }
        }
        Ok(())
    })
}
