//! Run checkpoints (HDF5): everything needed to continue a twin experiment bit-for-bit.
//!
//! Random numbers are counter-keyed by (seed, purpose, cycle, member), so the "RNG stream
//! positions" are the cycle number itself; the observation cursor is the cycle as well. The
//! checkpoint stores the full ensemble in member order (any rank count can restart from it), the
//! true state, the per-cycle statistics (the metric accumulators are rebuilt from them), the
//! accumulators of the distributional and hidden-variable scores, the filter's own state
//! (particle weights, …), the inflation factor in use, a hash of the science config and the genda version. The run file
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
    /// Per-cycle (rmse_f, rmse_a, spread_f, spread_a), row-major (cycle, 4).
    pub series: Vec<f64>,
    pub inflation: f64,
    /// The filter's own state (`Filter::save_state`: particle weights, networks and their
    /// optimiser moments, histories, …), one dataset per part in the group `filter_state`; may
    /// be empty.
    pub filter_state: SavedState,
    /// Distributional-score accumulators [Σ CRPS, cycles, rank-histogram counts…]; may be empty.
    pub scores: Vec<f64>,
    /// Hidden-variable score accumulators; may be empty.
    pub hidden_scores: Vec<f64>,
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
        put("series", &c.series, vec![c.series.len() / 4, 4])?;
        // Optional pieces: absent when empty.
        if !c.filter_state.is_empty() {
            let g = f
                .create_group("filter_state")
                .map_err(|e| h5err(path, "filter_state", e))?;
            for (name, v) in c.filter_state.parts() {
                let what = format!("filter_state/{name}");
                g.new_dataset::<f64>()
                    .shape(vec![v.len()])
                    .create(name.as_str())
                    .and_then(|ds| ds.write_raw(v))
                    .map_err(|e| h5err(path, &what, e))?;
            }
        }
        for (name, v) in [("scores", &c.scores), ("hidden_scores", &c.hidden_scores)] {
            if !v.is_empty() {
                put(name, v, vec![v.len()])?;
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
    let optional = |k: &str| -> Result<Vec<f64>> {
        if f.link_exists(k) {
            d(k)
        } else {
            Ok(Vec::new())
        }
    };
    let c = RunCheckpoint {
        cycle: n("cycle")? as usize,
        members: n("members")? as usize,
        state_dim: n("state_dim")? as usize,
        ensemble: d("ensemble")?,
        truth: d("truth")?,
        series: d("series")?,
        inflation: n("inflation")?,
        filter_state: if f.link_exists("filter_state") {
            let g = f
                .group("filter_state")
                .map_err(|e| h5err(path, "group `filter_state`", e))?;
            let names = g
                .member_names()
                .map_err(|e| h5err(path, "group `filter_state`", e))?;
            let mut parts = Vec::with_capacity(names.len());
            for name in names {
                let v = g
                    .dataset(&name)
                    .and_then(|ds| ds.read_raw())
                    .map_err(|e| h5err(path, &format!("dataset `filter_state/{name}`"), e))?;
                parts.push((name, v));
            }
            SavedState::from_parts(parts)
        } else {
            SavedState::new()
        },
        scores: optional("scores")?,
        hidden_scores: optional("hidden_scores")?,
        config_hash: s("config_hash")?,
        genda_version: s("genda_version")?,
        run_snapshot: Some(s("run_snapshot")?).filter(|v| !v.is_empty()),
    };
    if c.ensemble.len() != c.members * c.state_dim
        || c.truth.is_empty()
        || c.truth.len() % c.state_dim.max(1) != 0
        || c.series.len() != 4 * c.cycle
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
