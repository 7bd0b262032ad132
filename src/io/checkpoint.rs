//! Run checkpoints (HDF5): everything needed to continue a twin experiment bit-for-bit.
//!
//! Random numbers are counter-keyed by (seed, purpose, cycle, member), so the "RNG stream
//! positions" are the cycle number itself; the observation cursor is the cycle as well. The
//! checkpoint stores the full ensemble in member order (any rank count can restart from it), the
//! true state, the assessor's accumulators (per-cycle statistics, distributional and
//! hidden-variable score sums, phase times) and the filter's own state (particle weights,
//! networks with their optimiser moments, histories), each a group of named datasets, the
//! inflation factor in use, a hash of the science config and the genda version. The run file
//! written so far is kept beside it as a NetCDF snapshot named after the cycle.
use super::PendingFile;
use crate::error::{GendaError, Result};
use crate::state::SavedState;
use hdf5::types::VarLenUnicode;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq)]
pub struct RunCheckpoint {
    /// Last completed cycle.
    pub cycle: usize,
    pub members: usize,
    pub state_dim: usize,
    /// Analysis ensemble after `cycle`, row-major (members, state_dim).
    pub ensemble: Vec<f64>,
    /// True state at `cycle` (the fine-grid truth's own state with `model.truth_grid`).
    pub truth: Vec<f64>,
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

fn h5err(path: &Path, what: &str, e: hdf5::Error) -> GendaError {
    GendaError::file(path, format!("checkpoint {what}: {e}"))
}

pub fn write_checkpoint(path: &Path, c: &RunCheckpoint) -> Result<()> {
    let pending = PendingFile::new(path)?;
    {
        let f = hdf5::File::create(pending.tmp_path()).map_err(|e| h5err(path, "create", e))?;
        let put = |name: &str, data: &[f64], shape: Vec<usize>| -> Result<()> {
            let ds = f
                .new_dataset::<f64>()
                .shape(shape)
                .create(name)
                .map_err(|e| h5err(path, name, e))?;
            ds.write_raw(data).map_err(|e| h5err(path, name, e))
        };
        put("ensemble", &c.ensemble, vec![c.members, c.state_dim])?;
        put("truth", &c.truth, vec![c.truth.len()])?;
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
    }
    pending.commit()?;
    Ok(())
}

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
    let d = |k: &str| -> Result<Vec<f64>> {
        f.dataset(k)
            .and_then(|ds| ds.read_raw())
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
        ensemble: d("ensemble")?,
        truth: d("truth")?,
        inflation: n("inflation")?,
        filter_state: group("filter_state")?,
        assessment: group("assessment")?,
        config_hash: s("config_hash")?,
        genda_version: s("genda_version")?,
        run_snapshot: Some(s("run_snapshot")?).filter(|v| !v.is_empty()),
    };
    if c.ensemble.len() != c.members * c.state_dim
        || c.truth.is_empty()
        || c.truth.len() % c.state_dim.max(1) != 0
    {
        return Err(GendaError::file(
            path,
            "checkpoint datasets have inconsistent sizes (corrupt?)",
        ));
    }
    Ok(c)
}

/// Where the run-file snapshot of `cycle` lives for checkpoint `ckpt`.
pub fn snapshot_path(ckpt: &Path, cycle: usize) -> PathBuf {
    let name = ckpt
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "checkpoint".into());
    ckpt.with_file_name(format!("{name}.cycle{cycle:09}.nc"))
}
