//! Run checkpoints (HDF5): everything needed to continue a twin experiment bit-for-bit.
//!
//! Random numbers are counter-keyed by (seed, purpose, cycle, member), so the "RNG stream
//! positions" are the cycle number itself; the observation cursor is the cycle as well. The
//! checkpoint stores the full ensemble (members, n) in member order, each rank writing its slab
//! into the one file (parallel HDF5) and a restart on any layout reading only its own; the
//! true state, the assessor's accumulators (per-cycle statistics, distributional and
//! hidden-variable score sums, phase times) and the filter's own state (particle weights,
//! networks with their optimiser moments, histories), each a group of named datasets, the
//! inflation factor in use, a hash of the science config and the genda version. The run file
//! written so far is kept beside it as a NetCDF snapshot: two of them (`snapshot_path`), used in
//! turn, each brought up to date with the rows since its last update (`RunWriter::snapshot`).
use super::{agree, SharedPending};
use crate::error::{GendaError, Result};
use crate::parallel::Collectives;
use crate::state::SavedState;
use hdf5::types::VarLenUnicode;
use ndarray::{s, Array2, ArrayView2};
use std::ops::Range;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq)]
pub struct RunCheckpoint {
    /// Last completed cycle.
    pub cycle: usize,
    pub members: usize,
    pub state_dim: usize,
    /// Values of the stored truth: `state_dim`, or the fine-grid truth's own state size with
    /// `model.truth_grid`.
    pub truth_len: usize,
    pub inflation: f64,
    /// The filter's own state (`Filter::save_state`: particle weights, networks and their
    /// optimiser moments, histories, …), one dataset per part in the group `filter_state`; may
    /// be empty.
    pub filter_state: SavedState,
    /// The assessor's accumulators (`experiment::Assessor::save`: the per-cycle series,
    /// distributional and hidden-variable score sums, phase times), in the group `assessment`.
    pub assessment: SavedState,
    pub config_hash: String,
    pub genda_version: String,
    /// File name (in the checkpoint's directory) of the run-file snapshot at `cycle`, if any.
    pub run_snapshot: Option<String>,
}

/// This rank's part of the checkpoint's ensemble and truth.
pub struct CheckpointSlab<'a> {
    /// Its members `members` on the state indices `columns` (members, columns).
    pub ensemble: ArrayView2<'a, f64>,
    pub members: Range<usize>,
    pub columns: Range<usize>,
    /// The truth values it writes, at `truth_at` of the stored truth (empty: none).
    pub truth: &'a [f64],
    pub truth_at: usize,
}

fn h5err(path: &Path, what: &str, e: hdf5::Error) -> GendaError {
    GendaError::file(path, format!("checkpoint {what}: {e}"))
}

/// Write the checkpoint `path`: every rank of `comm` writes its `slab` of the ensemble
/// (members, n) and of the truth into one HDF5 file (MPI-IO on more than one rank); then the
/// root adds `c`'s metadata and the filter's and assessor's state, and renames the finished
/// file into place (the previous checkpoint stays intact until then). `c` matters on the root;
/// its sizes on every rank.
pub fn write_checkpoint(
    path: &Path,
    c: &RunCheckpoint,
    slab: &CheckpointSlab,
    comm: &dyn Collectives,
) -> Result<()> {
    let pending = SharedPending::new(path, None, comm)?;
    let res = write_slabs(pending.tmp_path(), path, c, slab, comm);
    agree(comm, res, path, "checkpoint: writing")?;
    let res = if comm.is_root() {
        write_metadata(pending.tmp_path(), path, c)
    } else {
        Ok(())
    };
    agree(comm, res, path, "checkpoint: writing")?;
    pending.commit(comm)?;
    Ok(())
}

/// The ensemble and truth datasets, each rank its slab: one MPI-IO collective write per dataset
/// on more than one rank (every rank takes part, one with nothing to write with an empty block).
fn write_slabs(
    tmp: &Path,
    path: &Path,
    c: &RunCheckpoint,
    slab: &CheckpointSlab,
    comm: &dyn Collectives,
) -> Result<()> {
    let parallel = comm.mpi_handle().filter(|_| comm.size() > 1);
    let f = match parallel {
        Some(raw) => hdf5::File::with_options()
            .with_fapl(|p| p.mpio(raw, None))
            .create(tmp),
        None => hdf5::File::create(tmp),
    }
    .map_err(|e| h5err(path, "create", e))?;
    let ens = f
        .new_dataset::<f64>()
        .shape(vec![c.members, c.state_dim])
        .create("ensemble")
        .map_err(|e| h5err(path, "ensemble", e))?;
    let truth = f
        .new_dataset::<f64>()
        .shape(vec![c.truth_len])
        .create("truth")
        .map_err(|e| h5err(path, "truth", e))?;
    let collective = parallel.is_some();
    let block = slab.ensemble.as_standard_layout();
    let count = if slab.members.is_empty() || slab.columns.is_empty() {
        [0, 0]
    } else {
        [slab.members.len(), slab.columns.len()]
    };
    let data = if count[0] == 0 {
        &[][..]
    } else {
        block.as_slice().expect("standard layout")
    };
    let at = [slab.members.start, slab.columns.start];
    // Every rank checks its blocks first and all agree, so that none waits in a collective
    // write that another rank never enters.
    let problem = super::hdf5_io::block_problem(&ens.shape(), &at, &count, data.len())
        .map(|p| format!("ensemble: {p}"))
        .or_else(|| {
            super::hdf5_io::block_problem(
                &truth.shape(),
                &[slab.truth_at],
                &[slab.truth.len()],
                slab.truth.len(),
            )
            .map(|p| format!("truth: {p}"))
        });
    if !comm.all_ok(problem.is_none()) {
        return Err(GendaError::file(
            path,
            match problem {
                Some(p) => format!("checkpoint slab of this rank: {p}"),
                None => "checkpoint: another rank's slab does not fit (see its error)".into(),
            },
        ));
    }
    super::hdf5_io::write_block(&ens, &at, &count, data, collective)
        .map_err(|e| GendaError::file(path, format!("checkpoint write ensemble: {e}")))?;
    super::hdf5_io::write_block(
        &truth,
        &[slab.truth_at],
        &[slab.truth.len()],
        slab.truth,
        collective,
    )
    .map_err(|e| GendaError::file(path, format!("checkpoint write truth: {e}")))?;
    Ok(())
}

/// The root's part: attributes and the groups of named datasets, in the file the ranks wrote.
fn write_metadata(tmp: &Path, path: &Path, c: &RunCheckpoint) -> Result<()> {
    let f = hdf5::File::append(tmp).map_err(|e| h5err(path, "reopen", e))?;
    for (group, state) in [
        ("filter_state", &c.filter_state),
        ("assessment", &c.assessment),
    ] {
        if state.is_empty() {
            continue;
        }
        let g = f.create_group(group).map_err(|e| h5err(path, group, e))?;
        for (name, v) in state.parts() {
            let what = format!("{group}/{name}");
            g.new_dataset::<f64>()
                .shape(vec![v.len()])
                .create(name.as_str())
                .and_then(|ds| ds.write_raw(v))
                .map_err(|e| h5err(path, &what, e))?;
        }
    }
    let nums: [(&str, f64); 4] = [
        ("cycle", c.cycle as f64),
        ("members", c.members as f64),
        ("state_dim", c.state_dim as f64),
        ("inflation", c.inflation),
    ];
    for (k, v) in nums {
        f.new_attr::<f64>()
            .create(k)
            .and_then(|a| a.write_scalar(&v))
            .map_err(|e| h5err(path, k, e))?;
    }
    let strs = [
        ("config_hash", c.config_hash.clone()),
        ("genda_version", c.genda_version.clone()),
        ("run_snapshot", c.run_snapshot.clone().unwrap_or_default()),
        ("kind", "genda run checkpoint".to_string()),
    ];
    for (k, v) in strs {
        let s: VarLenUnicode = v
            .parse()
            .map_err(|e| GendaError::file(path, format!("attribute {k}: {e}")))?;
        f.new_attr::<VarLenUnicode>()
            .create(k)
            .and_then(|a| a.write_scalar(&s))
            .map_err(|e| h5err(path, k, e))?;
    }
    Ok(())
}

/// Read checkpoint `path`'s metadata and state (not the ensemble: `read_checkpoint_slab`).
pub fn read_checkpoint(path: &Path) -> Result<RunCheckpoint> {
    if !path.exists() {
        return Err(GendaError::file(path, "checkpoint: no such file"));
    }
    let f = hdf5::File::open(path)
        .map_err(|e| h5err(path, "is not a readable HDF5 file (corrupt?)", e))?;
    let s = |k: &str| -> Result<String> {
        let v: VarLenUnicode = f
            .attr(k)
            .and_then(|a| a.read_scalar())
            .map_err(|e| h5err(path, &format!("attribute `{k}` missing"), e))?;
        Ok(v.as_str().to_string())
    };
    if s("kind")? != "genda run checkpoint" {
        return Err(GendaError::file(path, "not a genda run checkpoint"));
    }
    let n = |k: &str| -> Result<f64> {
        f.attr(k)
            .and_then(|a| a.read_scalar())
            .map_err(|e| h5err(path, &format!("attribute `{k}` missing"), e))
    };
    let shape = |k: &str| -> Result<Vec<usize>> {
        f.dataset(k)
            .map(|ds| ds.shape())
            .map_err(|e| h5err(path, &format!("dataset `{k}`"), e))
    };
    // A group of named datasets (absent: empty).
    let group = |k: &str| -> Result<SavedState> {
        if !f.link_exists(k) {
            return Ok(SavedState::new());
        }
        let g = f
            .group(k)
            .map_err(|e| h5err(path, &format!("group `{k}`"), e))?;
        let names = g
            .member_names()
            .map_err(|e| h5err(path, &format!("group `{k}`"), e))?;
        let mut parts = Vec::with_capacity(names.len());
        for name in names {
            let v = g
                .dataset(&name)
                .and_then(|ds| ds.read_raw())
                .map_err(|e| h5err(path, &format!("dataset `{k}/{name}`"), e))?;
            parts.push((name, v));
        }
        Ok(SavedState::from_parts(parts))
    };
    if !f.link_exists("assessment") {
        return Err(GendaError::file(
            path,
            "checkpoint has no `assessment` group: it was written by an earlier genda build (before the statistics moved into the assessor); rerun from the start",
        ));
    }
    let c = RunCheckpoint {
        cycle: n("cycle")? as usize,
        members: n("members")? as usize,
        state_dim: n("state_dim")? as usize,
        truth_len: shape("truth")?.iter().product(),
        inflation: n("inflation")?,
        filter_state: group("filter_state")?,
        assessment: group("assessment")?,
        config_hash: s("config_hash")?,
        genda_version: s("genda_version")?,
        run_snapshot: Some(s("run_snapshot")?).filter(|v| !v.is_empty()),
    };
    if shape("ensemble")? != [c.members, c.state_dim]
        || c.truth_len == 0
        || c.truth_len % c.state_dim.max(1) != 0
    {
        return Err(GendaError::file(
            path,
            "checkpoint datasets have inconsistent sizes (corrupt?)",
        ));
    }
    Ok(c)
}

/// Read only this rank's slab of checkpoint `path`: the members `members` on the state
/// indices `columns` (members, columns), and the truth values `truth`.
pub fn read_checkpoint_slab(
    path: &Path,
    members: Range<usize>,
    columns: Range<usize>,
    truth: Range<usize>,
) -> Result<(Array2<f64>, Vec<f64>)> {
    let f = hdf5::File::open(path)
        .map_err(|e| h5err(path, "is not a readable HDF5 file (corrupt?)", e))?;
    let ds = |k: &str| {
        f.dataset(k)
            .map_err(|e| h5err(path, &format!("dataset `{k}`"), e))
    };
    let ens = ds("ensemble")?;
    let (shape, tshape) = (ens.shape(), ds("truth")?.shape());
    if shape.len() != 2
        || members.end > shape[0]
        || columns.end > shape[1]
        || tshape.len() != 1
        || truth.end > tshape[0]
    {
        return Err(GendaError::file(
            path,
            format!("checkpoint has an ensemble of shape {shape:?} and a truth of {tshape:?}: the slab of members {members:?}, columns {columns:?}, truth {truth:?} does not fit"),
        ));
    }
    let e: Array2<f64> = ens
        .read_slice_2d(s![members, columns])
        .map_err(|e| h5err(path, "read ensemble", e))?;
    let t: Vec<f64> = ds("truth")?
        .read_slice_1d(s![truth])
        .map_err(|e| h5err(path, "read truth", e))?
        .to_vec();
    Ok((e, t))
}

/// Where run-file snapshot `slot` (0 or 1: a checkpoint updates the one the previous
/// checkpoint does not name) lives for checkpoint `ckpt`: `<ckpt>.run-a.nc`, `<ckpt>.run-b.nc`.
pub fn snapshot_path(ckpt: &Path, slot: usize) -> PathBuf {
    let name = ckpt
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "checkpoint".into());
    let tag = if slot == 0 { 'a' } else { 'b' };
    ckpt.with_file_name(format!("{name}.run-{tag}.nc"))
}
